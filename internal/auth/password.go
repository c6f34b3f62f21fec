package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/argon2"
)

// Argon2Params are the cost of an argon2id password hash.
type Argon2Params struct {
	// Memory is in KiB.
	Memory  uint32
	Time    uint32
	Threads uint8
	SaltLen uint32
	KeyLen  uint32
}

// PasswordParams are the parameters of new password hashes: 64 MiB, one
// pass, two lanes. That is above OWASP's first argon2id setting (46 MiB,
// t=1, p=1) in memory, the cost that hurts GPU crackers, and its two lanes
// use both cores of a small server; one check takes 30-45 ms on the
// project's 2-core machine.
// Existing hashes keep the parameters written in them, so raising these
// later does not lock anyone out. Tests may lower them, before any hashing.
var PasswordParams = Argon2Params{Memory: 64 * 1024, Time: 1, Threads: 2, SaltLen: 16, KeyLen: 32}

// Bounds on the parameters read back from a stored hash, so that a
// corrupted or planted hash cannot make one check take gigabytes or minutes.
const (
	maxMemory  = 1 << 20 // 1 GiB
	maxTime    = 16
	maxThreads = 16
)

// hashSlots bounds how many argon2 computations run at once: each holds
// Memory KiB, and a burst of logins must not take the server's memory.
var hashSlots = make(chan struct{}, max(2, runtime.GOMAXPROCS(0)))

// argonRuns counts argon2 computations, so tests can see that a login of
// an unknown address still pays for one.
var argonRuns atomic.Int64

func deriveKey(password, salt []byte, p Argon2Params) []byte {
	hashSlots <- struct{}{}
	defer func() { <-hashSlots }()
	argonRuns.Add(1)
	return argon2.IDKey(password, salt, p.Time, p.Memory, p.Threads, p.KeyLen)
}

var b64 = base64.RawStdEncoding

// HashPassword returns the argon2id PHC string of password:
// $argon2id$v=19$m=65536,t=1,p=2$<salt>$<hash>, in unpadded base64.
func HashPassword(password string) (string, error) {
	p := PasswordParams
	if p.Memory == 0 || p.Time == 0 || p.Threads == 0 || p.SaltLen < 8 || p.KeyLen < 16 {
		return "", errors.New("hash password: unusable argon2 parameters")
	}
	salt := make([]byte, p.SaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	key := deriveKey([]byte(password), salt, p)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, p.Memory, p.Time, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// CheckPassword reports whether password matches the argon2id hash, in
// constant time. A malformed hash matches nothing.
func CheckPassword(hash, password string) bool {
	p, salt, key, ok := parsePHC(hash)
	if !ok {
		return false
	}
	got := deriveKey([]byte(password), salt, p)
	return subtle.ConstantTimeCompare(got, key) == 1
}

// parsePHC reads $argon2id$v=19$m=M,t=T,p=P$salt$hash.
func parsePHC(s string) (p Argon2Params, salt, key []byte, ok bool) {
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" || parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return p, nil, nil, false
	}
	var m, t, threads uint64
	for i, kv := range strings.Split(parts[3], ",") {
		name, val, found := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(val, 10, 32)
		if !found || err != nil || i > 2 || name != "mtp"[i:i+1] {
			return p, nil, nil, false
		}
		switch i {
		case 0:
			m = n
		case 1:
			t = n
		case 2:
			threads = n
		}
	}
	if m == 0 || m > maxMemory || t == 0 || t > maxTime || threads == 0 || threads > maxThreads || m < 8*threads {
		return p, nil, nil, false
	}
	salt, err1 := b64.DecodeString(parts[4])
	key, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(salt) < 8 || len(key) < 16 || len(key) > 64 {
		return p, nil, nil, false
	}
	p = Argon2Params{Memory: uint32(m), Time: uint32(t), Threads: uint8(threads), SaltLen: uint32(len(salt)), KeyLen: uint32(len(key))}
	return p, salt, key, true
}

// dummy is a hash of a random password under the current parameters. A
// login of an unknown address checks the password against it, so that it
// takes as long as a login of a known one: response time must not tell
// which addresses have accounts.
var dummy struct {
	sync.Mutex
	params Argon2Params
	hash   string
}

func dummyHash() string {
	dummy.Lock()
	defer dummy.Unlock()
	if dummy.hash == "" || dummy.params != PasswordParams {
		h, err := HashPassword(randomToken())
		if err != nil {
			// Unusable parameters: any well-formed hash keeps the timing.
			h = "$argon2id$v=19$m=65536,t=1,p=2$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
		}
		dummy.hash, dummy.params = h, PasswordParams
	}
	return dummy.hash
}
