package secrets_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/keybridge/keybridge/internal/secrets"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// FuzzOpen hands the key ring corrupted sealed values: truncated, flipped,
// of other versions or formats, bound to other associated data. Open must
// never panic, must open nothing but the values Seal made (with their own
// associated data), and must fail only with the package's errors, whose
// text holds neither the plaintext nor the ciphertext. Run it with
// scripts/fuzz.sh (docs/testing.md).
func FuzzOpen(f *testing.F) {
	ring := openRing(f, storetest.SQLite(f), masterKey(7))
	plain := []byte("sk-fuzz-plaintext-0123456789")
	ad := []byte("provider_keys/0190/api_key")
	sealed, err := ring.Seal(plain, ad)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sealed, ad)
	f.Add(sealed[:len(sealed)-1], ad)
	f.Add(sealed, ad[:len(ad)-1])
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)/2] ^= 1
	f.Add(flipped, ad)
	other := bytes.Clone(sealed)
	other[4] = 2 // a version the ring lacks
	f.Add(other, ad)
	f.Add([]byte{1, 0, 0, 0, 1}, []byte(nil))
	f.Fuzz(func(t *testing.T, ct, ad2 []byte) {
		got, err := ring.Open(ct, ad2)
		if err == nil {
			if !bytes.Equal(ct, sealed) || !bytes.Equal(ad2, ad) || !bytes.Equal(got, plain) {
				t.Fatalf("Open(%x, %q) = %q, nil; only the sealed value opens", ct, ad2, got)
			}
			return
		}
		if !errors.Is(err, secrets.ErrInvalidCiphertext) && !errors.Is(err, secrets.ErrUnknownVersion) {
			t.Fatalf("Open(%x) = %v, want ErrInvalidCiphertext or ErrUnknownVersion", ct, err)
		}
		if msg := err.Error(); bytes.Contains([]byte(msg), plain) || (len(ct) > 8 && bytes.Contains([]byte(msg), ct)) {
			t.Fatalf("Open's error %q holds the secret or the ciphertext", msg)
		}
		if v, err := secrets.Version(ct); err == nil && v < 1 {
			t.Fatalf("Version(%x) = %d, nil; want a version from 1", ct, v)
		}
	})
}
