package sqlstore

import (
	"encoding/binary"
	"errors"
	"math"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// Raw usage rows are kept packed: the rows of one org within one UTC hour
// that one InsertUsage writes go in one usage_batches row, as a blob. A
// row in a table of its own cost the engine about 8 µs of CPU per request
// (nineteen bound parameters, a B-tree cell, its share of the WAL), which
// was a sixth of what the whole gateway spent on a request; packed, a row
// costs a few dozen bytes of encoding. Raw rows are only ever read for the
// partial hours at the edges of a usage query (whole hours and days come
// from usage_rollup), so the hour they are filed under is all a read needs
// to find them.
//
// The blob, version 1:
//
//	byte     version (1)
//	uvarint  n, then n strings (uvarint length, bytes): the dictionary;
//	         index 0 is "" and not stored, index i is the i-th string
//	uvarint  rows, then per row:
//	  uvarint  microseconds since the hour
//	  7 × uvarint  dictionary indexes of project, user, API key, AI key,
//	               provider, provider key, model
//	  varint   status
//	  byte     flags: 1 = stream
//	  2 × 8 bytes  latency and upstream latency (float64 bits, little endian)
//	  5 × varint   input, output, cache read, cache write tokens; failovers
const usagePackVersion = 1

// usagePackStrings is the number of dictionary-coded fields of a row.
const usagePackStrings = 7

// usagePackFields are the dictionary-coded fields of u, in blob order.
func usagePackFields(u *keybridge.Usage) [usagePackStrings]*string {
	return [...]*string{&u.ProjectID, &u.UserID, &u.APIKeyID, &u.AIKeyID, &u.ProviderID, &u.ProviderKeyID, &u.Model}
}

// packUsage encodes rows, all of one org within the hour starting at hour
// (Unix microseconds), appending to b.
func packUsage(b []byte, hour int64, rows []*keybridge.Usage) []byte {
	dict := map[string]uint64{"": 0}
	var words []string
	idx := make([]uint64, 0, len(rows)*usagePackStrings)
	for _, u := range rows {
		for _, f := range usagePackFields(u) {
			i, ok := dict[*f]
			if !ok {
				i = uint64(len(words) + 1)
				dict[*f] = i
				words = append(words, *f)
			}
			idx = append(idx, i)
		}
	}
	b = append(b, usagePackVersion)
	b = binary.AppendUvarint(b, uint64(len(words)))
	for _, w := range words {
		b = binary.AppendUvarint(b, uint64(len(w)))
		b = append(b, w...)
	}
	b = binary.AppendUvarint(b, uint64(len(rows)))
	for r, u := range rows {
		b = binary.AppendUvarint(b, uint64(u.Time.UnixMicro()-hour))
		for _, i := range idx[r*usagePackStrings : (r+1)*usagePackStrings] {
			b = binary.AppendUvarint(b, i)
		}
		b = binary.AppendVarint(b, int64(u.Status))
		var flags byte
		if u.Stream {
			flags |= 1
		}
		b = append(b, flags)
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(u.LatencyMS))
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(u.UpstreamLatencyMS))
		for _, v := range [...]int64{u.InputTokens, u.OutputTokens, u.CacheReadTokens, u.CacheWriteTokens, int64(u.Failovers)} {
			b = binary.AppendVarint(b, v)
		}
	}
	return b
}

// errUsagePack is a blob that is not a packUsage encoding.
var errUsagePack = errors.New("usage batch: malformed")

// usageUnpacker reads a blob made by packUsage.
type usageUnpacker struct {
	b   []byte
	err error
}

func (p *usageUnpacker) uvarint() uint64 {
	v, n := binary.Uvarint(p.b)
	if n <= 0 {
		p.fail()
		return 0
	}
	p.b = p.b[n:]
	return v
}

func (p *usageUnpacker) varint() int64 {
	v, n := binary.Varint(p.b)
	if n <= 0 {
		p.fail()
		return 0
	}
	p.b = p.b[n:]
	return v
}

func (p *usageUnpacker) bytes(n uint64) []byte {
	if uint64(len(p.b)) < n {
		p.fail()
		return nil
	}
	v := p.b[:n]
	p.b = p.b[n:]
	return v
}

func (p *usageUnpacker) fail() {
	if p.err == nil {
		p.err = errUsagePack
	}
	p.b = nil
}

// unpackUsage calls fn with each row of blob, filed under the hour
// starting at hour, in order. org is the rows' org and the row's ID is
// empty. u is reused from call to call. Every length and index is checked:
// a malformed blob is an error, never a panic.
func unpackUsage(blob []byte, org string, hour time.Time, fn func(u *keybridge.Usage)) error {
	p := usageUnpacker{b: blob}
	if v := p.bytes(1); p.err != nil || v[0] != usagePackVersion {
		return errUsagePack
	}
	// Each stored word takes a byte at least, so n is checked against
	// what is left before it sizes anything.
	n := p.uvarint()
	if n > uint64(len(p.b)) {
		return errUsagePack
	}
	words := make([]string, 1, n+1)
	for range n {
		words = append(words, string(p.bytes(p.uvarint())))
	}
	rows := p.uvarint()
	if p.err != nil {
		return p.err
	}
	base := hour.UnixMicro()
	u := keybridge.Usage{OrgID: org}
	for range rows {
		u.Time = time.UnixMicro(base + int64(p.uvarint())).UTC()
		for _, f := range usagePackFields(&u) {
			i := p.uvarint()
			if i >= uint64(len(words)) {
				p.fail()
				break
			}
			*f = words[i]
		}
		u.Status = int(p.varint())
		flags := p.bytes(1)
		lat := p.bytes(16)
		if p.err != nil {
			return p.err
		}
		u.Stream = flags[0]&1 != 0
		u.LatencyMS = math.Float64frombits(binary.LittleEndian.Uint64(lat))
		u.UpstreamLatencyMS = math.Float64frombits(binary.LittleEndian.Uint64(lat[8:]))
		u.InputTokens, u.OutputTokens, u.CacheReadTokens, u.CacheWriteTokens = p.varint(), p.varint(), p.varint(), p.varint()
		u.Failovers = int(p.varint())
		if p.err != nil {
			return p.err
		}
		fn(&u)
	}
	if len(p.b) != 0 {
		return errUsagePack
	}
	return nil
}
