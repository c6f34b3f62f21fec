package auth

import (
	"encoding/binary"
	"maps"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// The credential cache sits on the request path of every gateway call, so
// a hit must cost little more than the SHA-256 before it, must not
// allocate, and must not slow down as the cache grows. It is sharded by the
// first byte of the token's SHA-256 (uniformly spread, so no further
// hashing is needed), and each shard is an open-addressing table of atomic
// pointers indexed by 8 more bytes of the hash: a hit takes no lock and
// writes nothing shared but a counter, so readers on several cores do not
// pass a lock's cache line between them. The entry holds the whole hash,
// compared before it is trusted.
//
// Everything that changes the cache (loads, evictions, invalidations) is
// rare next to hits, so it is serialized by one mutex that also guards the
// indexes by key and by user. A writer changes a table's slots one atomic
// store at a time, and replaces a table that fills up (with live entries
// or with the tombstones of removed ones) by a fresh copy.

const shardCount = 256

// credKind says which table a cached credential came from.
type credKind uint8

const (
	kindAPIKey credKind = iota + 1
	kindAIKey
	// kindSigV4 is an AWS AI key found by its public key, for SigV4: its
	// entry is keyed by the SHA-256 of the kbk_ key (never equal to that
	// of a kbs_ secret) and holds the opened secret.
	kindSigV4
)

// entry is one verified (or refused) credential. What a hit reads comes
// first, within one 64-byte cache line: with a million keys the line is
// rarely in the CPU's cache, and each line is a trip to memory. The
// padding makes it 128 bytes, a size class whose objects start on a line.
type entry struct {
	hash [32]byte
	// fastUntil is deadline less the coarse clock's worst lag: before it
	// a hit may trust the coarse clock; after it, it reads the precise one.
	fastUntil int64
	// p is the shared, read-only answer; nil when the credential exists but
	// is refused (suspended, revoked, expired, or its owner left the org).
	p *keybridge.Principal
	// lastUsed is the second of the last use on the Service's clock, plus
	// one (zero: not used since loaded).
	lastUsed atomic.Int64
	kind     credKind
	// dirty says the entry sits on the cache's dirty stack, waiting for
	// the next flush; nextDirty links it there.
	dirty     atomic.Bool
	nextDirty atomic.Pointer[entry]

	// deadline is when the entry stops being trusted, in nanoseconds of the
	// Service's clock: the key's expiry or grace end, or the cache TTL.
	deadline int64
	id       string
	userID   string // platform keys only: the owner whose role is part of the answer
	// sig is what checking a signature takes; kindSigV4 entries only.
	sig *sigV4Cred
	// hard is the key's own end (expiry or grace end) on the Service's
	// clock, which no outage of the store extends: an entry is served
	// stale only before it (zero: never).
	hard int64
}

// table is one shard's slots; len(slots) is a power of two. A slot holds
// nil (free: a probe ends there), tombstone, or an entry, with the probe
// key of its hash beside it so that a probe passes other entries without
// reading them: with a million keys each read is a trip to memory.
type table struct {
	slots []tableSlot
	mask  uint64
}

// tableSlot's two words are stored one after the other, not together, so
// a reader may see a key that does not go with the entry. It then passes
// the slot and at worst misses an entry that is there, which sends the
// caller to the store: never a wrong answer, since the entry's whole hash
// is compared.
type tableSlot struct {
	key atomic.Uint64
	e   atomic.Pointer[entry]
}

// set stores e with its key; readers see the key first.
func (s *tableSlot) set(key uint64, e *entry) {
	s.key.Store(key)
	s.e.Store(e)
}

// tombstone fills the slot of a removed entry: a probe must go on past it.
var tombstone = new(entry)

func newTable(size int) *table {
	return &table{slots: make([]tableSlot, size), mask: uint64(size - 1)}
}

// find returns the entry for h, probing from key. It is the hit path.
func (t *table) find(h *[32]byte, key uint64) *entry {
	for i := key & t.mask; ; i = (i + 1) & t.mask {
		s := &t.slots[i]
		e := s.e.Load()
		if e == nil {
			return nil
		}
		if s.key.Load() == key && e.hash == *h && e != tombstone {
			return e
		}
	}
}

type shard struct {
	t atomic.Pointer[table]
	// live and dead count the slots holding entries and tombstones; the
	// cache's mu guards them.
	live, dead int
	_          [64 - 8 - 16]byte
	// hits sits on its own cache line: it is the one thing a hit writes,
	// and t's line should stay shared among the cores that read it.
	hits atomic.Uint64
	_    [64 - 8]byte
}

type idKey struct {
	kind credKind
	id   string
}

type cache struct {
	shards      [shardCount]shard
	perShardMax int

	// mu serializes every change and guards the fields below it.
	mu sync.Mutex
	// gen counts invalidations. A load notes it before reading the store
	// and is kept only if no invalidation came in between, so a change that
	// commits while a load is in flight can never leave a stale entry.
	gen atomic.Uint64
	// accepting is true while Run listens; live once it is sure to hear
	// every change, and only then are loads kept.
	accepting bool
	live      bool
	byID      map[idKey]*entry
	byUser    map[string]map[*entry]struct{}

	// dirty is a lock-free stack of entries used since the last flush,
	// linked through entry.nextDirty. Pushes happen at most once per entry
	// per flush; the flusher takes the whole stack at once.
	dirty atomic.Pointer[entry]

	neg negCache

	// stale is what the cache held when it last went deaf, kept for
	// while the store cannot be reached; nil when there is none. c.mu
	// guards it: only verifications that found the store down read it.
	stale *staleSet
	// staleHits counts verifications answered from stale.
	staleHits atomic.Uint64
}

// staleSet is the positive entries a cache held when its subscription
// stopped hearing changes, until (on the Service's clock): for an outage
// of the database, not for a subscription that merely dropped.
type staleSet struct {
	m     map[[32]byte]*entry
	until int64
}

func newCache(size, negSize int) *cache {
	c := &cache{
		// A quarter of headroom per shard: shards fill unevenly, and
		// evicting from a shard that is merely luckier than the average
		// would throw away live keys long before the cache is full.
		perShardMax: (size+shardCount-1)/shardCount + (size+4*shardCount-1)/(4*shardCount),
		byID:        map[idKey]*entry{},
		byUser:      map[string]map[*entry]struct{}{},
		neg:         negCache{max: negSize, m: map[[32]byte]int64{}},
	}
	for i := range c.shards {
		c.shards[i].t.Store(newTable(minTable))
	}
	return c
}

// minTable is the smallest table: with a million keys a shard holds about
// four thousand, with a few dozen a handful.
const minTable = 8

// slot is where a hash lives: its shard and where its probe starts.
func slot(h *[32]byte) (shard int, key uint64) {
	return int(h[0]), binary.LittleEndian.Uint64(h[8:16])
}

// get returns the entry for hash, or nil.
func (c *cache) get(h *[32]byte) (*entry, *shard) {
	i, key := slot(h)
	sh := &c.shards[i]
	return sh.t.Load().find(h, key), sh
}

// touch records that e was used at now (the Service's clock) without a
// write to the store and without allocating.
func (c *cache) touch(e *entry, now int64) {
	if sec := now/1e9 + 1; e.lastUsed.Load() != sec {
		c.markUsed(e, sec)
	}
}

// markUsed is touch past its check: sec (see entry.lastUsed) is new.
func (c *cache) markUsed(e *entry, sec int64) {
	e.lastUsed.Store(sec)
	if e.dirty.Load() || !e.dirty.CompareAndSwap(false, true) {
		return
	}
	for {
		head := c.dirty.Load()
		e.nextDirty.Store(head)
		if c.dirty.CompareAndSwap(head, e) {
			return
		}
	}
}

// drainDirty calls fn for every entry used since the last drain, with the
// second of its last use (see entry.lastUsed).
func (c *cache) drainDirty(fn func(e *entry, sec int64)) {
	for e := c.dirty.Swap(nil); e != nil; {
		next := e.nextDirty.Load()
		// Unlink before clearing dirty: once dirty is false a new use may
		// push e again and set nextDirty itself.
		e.nextDirty.Store(nil)
		e.dirty.Store(false)
		fn(e, e.lastUsed.Load())
		e = next
	}
}

// put stores e if the cache is live and no invalidation arrived since gen
// was read. It reports whether it stored e.
func (c *cache) put(e *entry, gen uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.live || c.gen.Load() != gen {
		return false
	}
	i, key := slot(&e.hash)
	sh := &c.shards[i]
	t := sh.t.Load()
	// Where e goes: the slot of the same hash, else the first tombstone
	// or free slot on its probe.
	at, old := -1, (*entry)(nil)
	for j := key & t.mask; ; j = (j + 1) & t.mask {
		cur := t.slots[j].e.Load()
		if cur == nil {
			if at < 0 {
				at = int(j)
			}
			break
		}
		if cur == tombstone {
			if at < 0 {
				at = int(j)
			}
			continue
		}
		if cur.hash == e.hash {
			at, old = int(j), cur
			break
		}
	}
	if old != nil {
		t.slots[at].e.Store(e)
		c.unindex(old)
		c.index(e)
		return true
	}
	if sh.live >= c.perShardMax {
		c.remove(c.victim(sh))
		t = sh.t.Load()
		at = -1
	}
	if (sh.live+sh.dead+1)*4 > len(t.slots)*3 {
		// Full of entries or tombstones: a fresh table with room to grow.
		t = c.rebuild(sh, max(minTable, nextPow2((sh.live+1)*2)))
		at = -1
	}
	if at < 0 {
		for j := key & t.mask; ; j = (j + 1) & t.mask {
			if cur := t.slots[j].e.Load(); cur == nil || cur == tombstone {
				at = int(j)
				break
			}
		}
	}
	if t.slots[at].e.Load() == tombstone {
		sh.dead--
	}
	t.slots[at].set(key, e)
	sh.live++
	c.index(e)
	return true
}

// victim picks a random entry of sh: random replacement needs no recency
// bookkeeping on the hit path.
func (c *cache) victim(sh *shard) *entry {
	t := sh.t.Load()
	for j := rand.Uint64() & t.mask; ; j = (j + 1) & t.mask {
		if e := t.slots[j].e.Load(); e != nil && e != tombstone {
			return e
		}
	}
}

// rebuild replaces sh's table by one of size slots holding its live
// entries, and returns it. Readers still probing the old table see it as
// it was, which is what they would have seen a moment earlier.
func (c *cache) rebuild(sh *shard, size int) *table {
	old, t := sh.t.Load(), newTable(size)
	for i := range old.slots {
		e := old.slots[i].e.Load()
		if e == nil || e == tombstone {
			continue
		}
		_, key := slot(&e.hash)
		j := key & t.mask
		for t.slots[j].e.Load() != nil {
			j = (j + 1) & t.mask
		}
		t.slots[j].set(key, e)
	}
	sh.t.Store(t)
	sh.dead = 0
	return t
}

func nextPow2(n int) int {
	p := 1
	for p < n {
		p <<= 1
	}
	return p
}

// index and unindex keep byID and byUser; c.mu is held.
func (c *cache) index(e *entry) {
	if prev := c.byID[idKey{e.kind, e.id}]; prev != nil && prev != e {
		// The same key under another hash cannot happen (a key has one
		// hash), but if it did, the older entry must not outlive its index.
		c.remove(prev)
	}
	c.byID[idKey{e.kind, e.id}] = e
	if e.userID != "" {
		set := c.byUser[e.userID]
		if set == nil {
			set = map[*entry]struct{}{}
			c.byUser[e.userID] = set
		}
		set[e] = struct{}{}
	}
}

func (c *cache) unindex(e *entry) {
	if c.byID[idKey{e.kind, e.id}] == e {
		delete(c.byID, idKey{e.kind, e.id})
	}
	if set := c.byUser[e.userID]; set != nil {
		delete(set, e)
		if len(set) == 0 {
			delete(c.byUser, e.userID)
		}
	}
}

// remove drops e from its shard and the indexes; c.mu is held.
func (c *cache) remove(e *entry) {
	i, key := slot(&e.hash)
	sh := &c.shards[i]
	t := sh.t.Load()
	for j := key & t.mask; ; j = (j + 1) & t.mask {
		cur := t.slots[j].e.Load()
		if cur == nil {
			break
		}
		if cur == e {
			t.slots[j].e.Store(tombstone)
			sh.live--
			sh.dead++
			break
		}
	}
	c.unindex(e)
}

// dropID drops the credential with this ID, from the stale set too: a
// change this process commits reaches it even while it is deaf.
func (c *cache) dropID(kind credKind, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen.Add(1)
	if e := c.byID[idKey{kind, id}]; e != nil {
		c.remove(e)
	}
	if c.stale != nil {
		maps.DeleteFunc(c.stale.m, func(_ [32]byte, e *entry) bool { return e.kind == kind && e.id == id })
	}
}

// dropUser drops every platform key of a user.
func (c *cache) dropUser(userID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen.Add(1)
	for e := range c.byUser[userID] {
		c.remove(e)
	}
	if c.stale != nil {
		maps.DeleteFunc(c.stale.m, func(_ [32]byte, e *entry) bool { return e.userID == userID })
	}
}

// clear drops everything. With goLive the cache also becomes live: the
// subscription has just said that it hears every change from now on.
func (c *cache) clear(goLive bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clearLocked()
	if goLive && c.accepting {
		c.live = true
	}
}

// goDeaf drops everything and turns the cache off until the next
// clear(true): the subscription may miss changes until then. When it was
// live, the entries still valid at now are kept aside as the stale set
// until now+grace (grace <= 0: none), for staleGet; a cache already deaf
// keeps the set it has, so that repeated failures to reconnect never
// extend it.
func (c *cache) goDeaf(now, grace int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var stale *staleSet
	if c.live && grace > 0 {
		stale = &staleSet{m: map[[32]byte]*entry{}, until: now + grace}
		for i := range c.shards {
			t := c.shards[i].t.Load()
			for j := range t.slots {
				if e := t.slots[j].e.Load(); e != nil && e != tombstone && e.p != nil && now < e.deadline {
					stale.m[e.hash] = e
				}
			}
		}
	} else if !c.live {
		stale = c.stale
	}
	c.live = false
	c.clearLocked()
	c.stale = stale
}

// staleGet returns the principal of h from the stale set, if the set is
// still good at now and the key's own end has not come.
func (c *cache) staleGet(h *[32]byte, kind credKind, now int64) (*keybridge.Principal, bool) {
	if e := c.staleEntry(h, kind, now); e != nil {
		return e.p, true
	}
	return nil, false
}

// staleEntry is staleGet's entry: a kindSigV4 caller needs the secret it
// holds to check a signature. A set found past its end is dropped, so the
// secrets of its SigV4 entries go with it.
func (c *cache) staleEntry(h *[32]byte, kind credKind, now int64) *entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stale == nil {
		return nil
	}
	if now >= c.stale.until {
		// A cache already deaf keeps the set it has, none now: repeated
		// failures to reconnect still find no grace.
		c.stale = nil
		return nil
	}
	e := c.stale.m[*h]
	if e == nil || e.kind != kind || now >= e.hard {
		return nil
	}
	c.staleHits.Add(1)
	return e
}

func (c *cache) clearLocked() {
	c.gen.Add(1)
	for i := range c.shards {
		sh := &c.shards[i]
		sh.t.Store(newTable(minTable))
		sh.live, sh.dead = 0, 0
	}
	c.byID = map[idKey]*entry{}
	c.byUser = map[string]map[*entry]struct{}{}
	c.neg.clear()
	c.stale = nil
}

// setAccepting is called as Run starts (true) and ends (false). Ending
// drops everything: without a subscription nothing may be trusted.
func (c *cache) setAccepting(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.accepting = on
	if !on {
		c.live = false
		c.clearLocked()
	}
}

func (c *cache) isLive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.live
}

func (c *cache) stats() (entries int, hits uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.shards {
		entries += c.shards[i].live
		hits += c.shards[i].hits.Load()
	}
	return entries, hits
}

// negCache remembers, briefly, hashes the store does not know, so a client
// retrying a dead token does not cost a lookup each time. It is bounded:
// tokens with a valid checksum are cheap to make, and must not grow memory.
type negCache struct {
	mu  sync.Mutex
	max int // zero or less: off
	m   map[[32]byte]int64
}

func (n *negCache) has(h *[32]byte, now int64) bool {
	if n.max <= 0 {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	until, ok := n.m[*h]
	if ok && now >= until {
		delete(n.m, *h)
		return false
	}
	return ok
}

func (n *negCache) add(h *[32]byte, until int64) {
	if n.max <= 0 {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.m[*h]; !ok && len(n.m) >= n.max {
		for k := range n.m {
			delete(n.m, k)
			break
		}
	}
	n.m[*h] = until
}

func (n *negCache) clear() {
	n.mu.Lock()
	n.m = map[[32]byte]int64{}
	n.mu.Unlock()
}

func (n *negCache) len() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.m)
}
