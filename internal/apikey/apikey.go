// Package apikey is Keybridge's token format: a prefix, 32 random bytes in
// base62, and a 6-character base62 CRC-32C (Castagnoli) of everything before it, so a
// scanner can tell a real token from noise offline and the server can drop
// garbage before any lookup. Tokens are stored only as SHA-256.
//
//	kb_  platform API keys (SPEC §3)
//	kbk_ AI key public identifiers (SPEC §5)
//	kbs_ AI key secrets (SPEC §5)
package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"hash/crc32"
	"math/big"
	"strings"
	"unsafe"
)

// castagnoli is CRC-32C, which CPUs compute in hardware: the checksum costs
// a few nanoseconds on the request path.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// The token prefixes.
const (
	PlatformPrefix = "kb_"
	AIKeyPrefix    = "kbk_"
	AISecretPrefix = "kbs_"
)

const (
	alphabet    = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	randomBytes = 32
	// bodyLen is the width of 32 bytes in base62: 62^43 > 2^256.
	bodyLen     = 43
	checksumLen = 6
	// DisplayLen is how many leading characters are kept for display.
	DisplayLen = 12
)

// Generate returns a new token with the given prefix.
func Generate(prefix string) (string, error) {
	var raw [randomBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	var b strings.Builder
	b.Grow(len(prefix) + bodyLen + checksumLen)
	b.WriteString(prefix)
	b.WriteString(encodeFixed(new(big.Int).SetBytes(raw[:]), bodyLen))
	sum := crc32.Checksum([]byte(b.String()), castagnoli)
	b.WriteString(encodeFixed(new(big.Int).SetUint64(uint64(sum)), checksumLen))
	return b.String(), nil
}

// encodeFixed writes n in base62, left-padded with zeros to width.
func encodeFixed(n *big.Int, width int) string {
	out := make([]byte, width)
	base := big.NewInt(62)
	mod := new(big.Int)
	for i := width - 1; i >= 0; i-- {
		n.DivMod(n, base, mod)
		out[i] = alphabet[mod.Int64()]
	}
	return string(out)
}

// Valid reports whether token has the prefix, the right length and a
// matching checksum. It is the cheap gate before any lookup, so it does not
// allocate and does not scan the body's alphabet: a body byte outside base62
// changes the checksum like any other error, and a token that slips past
// still has to match a stored hash.
func Valid(token, prefix string) bool {
	if len(token) != len(prefix)+bodyLen+checksumLen || token[:len(prefix)] != prefix {
		return false
	}
	var sum uint64
	for i := len(token) - checksumLen; i < len(token); i++ {
		d := digit(token[i])
		if d < 0 {
			return false
		}
		sum = sum*62 + uint64(d)
	}
	want := crc32.Checksum(bytesOf(token[:len(token)-checksumLen]), castagnoli)
	return subtle.ConstantTimeEq(int32(uint32(sum)), int32(want)) == 1 && sum>>32 == 0
}

// digits maps a byte to its base62 value, or -1.
var digits = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for i := range len(alphabet) {
		t[alphabet[i]] = int8(i)
	}
	return t
}()

func digit(c byte) int { return int(digits[c]) }

// Hash returns the SHA-256 of token, the only form in which tokens are stored.
func Hash(token string) [sha256.Size]byte { return sha256.Sum256(bytesOf(token)) }

// Display returns the leading characters of token kept for display.
func Display(token string) string {
	if len(token) < DisplayLen {
		return token
	}
	return token[:DisplayLen]
}

// HasKnownPrefix reports whether s starts with any Keybridge token prefix.
func HasKnownPrefix(s string) bool {
	return strings.HasPrefix(s, PlatformPrefix) || strings.HasPrefix(s, AIKeyPrefix) || strings.HasPrefix(s, AISecretPrefix)
}

// bytesOf views s as bytes without copying; the callers only read.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
