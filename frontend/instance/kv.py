"""Paged KV blocks in HBM with vLLM's prefix cache.

Semantics follow vLLM v1's KV cache manager: a block is identified by the
chained hash of the tokens in it and all before it (full blocks only); a new
request reuses the longest run of cached leading blocks; blocks with no
reference stay in a free queue as cache, evicted from the front (least
recently freed first); a request's blocks are returned tail first so its tail
is evicted before its head.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from frontend.workload.request import Request, TokenContent


@dataclass
class KVStats:
    lookups: int = 0
    lookup_blocks: int = 0
    hit_blocks: int = 0
    evictions: int = 0
    requests_without_ids: int = 0


_OUT = -1  # position of a block that is not in the free queue
_START = 1 << 40  # first queue position; positions only grow at the tail and shrink at the head


class FreeQueue:
    """Free blocks in eviction order (head first), with O(1) removal from anywhere.

    vLLM keeps a doubly linked list; an OrderedDict does the same in Python but
    allocates a node per insertion, and a finished 10k-token turn frees ~600
    blocks at once. Here the queue is a deque of block ids plus, per block, the
    absolute position of its live entry: removing a block only forgets that
    position, and stale entries are skipped when they reach the head (or dropped
    when stale ones outnumber live ones). Order and contents are exactly those of
    the linked list.
    """

    __slots__ = ("_dq", "_pos", "_head", "_tail", "_n", "_max_len")

    def __init__(self, num_blocks: int) -> None:
        self._dq: deque[int] = deque(range(num_blocks))
        self._pos = list(range(_START, _START + num_blocks))
        self._head = _START  # position of _dq[0]
        self._tail = _START + num_blocks  # position the next appended entry gets
        self._n = num_blocks
        self._max_len = 4 * num_blocks + 4096  # stale entries are dropped when the deque grows past this

    def __len__(self) -> int:
        return self._n

    def __contains__(self, b: int) -> bool:
        return self._pos[b] != _OUT

    def __iter__(self) -> Iterator[int]:
        pos = self._pos
        for i, b in enumerate(self._dq, self._head):
            if pos[b] == i:
                yield b

    # The queue holds exactly the blocks whose reference count is 0, so it is driven by the pool's
    # counts. Plain loops: on CPython 3.11 they beat map() over list.__setitem__ several times over,
    # and these run over every block of every turn.
    def acquire(self, refs: list[int], blocks: list[int]) -> None:
        """Take a reference on each of `blocks` (distinct ids); free ones leave the queue."""
        pos = self._pos
        taken = 0
        for b in blocks:
            r = refs[b]
            if not r:
                pos[b] = _OUT
                taken += 1
            refs[b] = r + 1
        if taken:
            self._n -= taken
            if len(self._dq) > self._max_len:
                self._compact()

    def release(self, refs: list[int], blocks: list[int]) -> None:
        """Drop one reference on each of `blocks` (distinct ids); unreferenced ones join the tail,
        last block first, so a request's tail is evicted before its head."""
        pos = self._pos
        t = self._tail
        released = []
        for b in reversed(blocks):
            r = refs[b] - 1
            refs[b] = r
            if not r:
                released.append(b)
                pos[b] = t
                t += 1
            elif r < 0:
                raise AssertionError(f"block {b} freed twice")
        if released:
            self._tail = t
            self._dq.extend(released)
            self._n += len(released)

    def pop_many(self, k: int) -> list[int]:
        """The first k blocks, taken off the head in order: k popleft() calls in one loop (k <= len(self))."""
        pos = self._pos
        dq = self._dq
        head = self._head
        out: list[int] = []
        append = out.append
        while k:
            b = dq.popleft()
            if pos[b] == head:
                pos[b] = _OUT
                append(b)
                k -= 1
            head += 1
        self._head = head
        self._n -= len(out)
        return out

    def append(self, b: int) -> None:
        """Put an unreferenced block (not in the queue) at the tail."""
        self._pos[b] = self._tail
        self._tail += 1
        self._dq.append(b)
        self._n += 1

    def popleft(self) -> int:
        pos = self._pos
        dq = self._dq
        while True:
            b = dq.popleft()
            i = self._head
            self._head = i + 1
            if pos[b] == i:
                pos[b] = _OUT
                self._n -= 1
                return b

    def move_to_front(self, b: int) -> None:
        if self._pos[b] != _OUT:
            self._head -= 1
            self._dq.appendleft(b)
            self._pos[b] = self._head

    def _compact(self) -> None:
        pos = self._pos
        live = [b for i, b in enumerate(self._dq, self._head) if pos[b] == i]
        self._dq = deque(live)
        self._head = _START
        self._tail = _START + len(live)
        pos = self._pos
        for i, b in enumerate(live, _START):
            pos[b] = i


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 on_evict: Callable[[int, int], None] | None = None) -> None:
        if num_blocks <= 0:
            raise ValueError("num_blocks must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # hash -> block id
        self.free_queue = FreeQueue(num_blocks)
        self.on_evict = on_evict  # (hash, block id) of a cached block being reused
        self.on_cache: Callable[[int, int], None] | None = None  # (hash, block id) newly registered
        self.stats = KVStats()

    # ---- accounting ----
    @property
    def num_free(self) -> int:
        return len(self.free_queue)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_queue)

    def usage(self) -> float:
        return self.num_used / self.num_blocks

    # ---- prefix cache ----
    def ensure_hashes(self, req: Request) -> list[int]:
        if req.hashes is None:
            if not self.enable_prefix_caching or not req.content.has_content:
                req.hashes = []
            else:
                total = req.input_tokens + req.output_tokens
                if req.output_content.has_content and req.content.ids is not None and req.output_content.ids is not None:
                    full = TokenContent(ids=req.content.ids + req.output_content.ids)
                    req.hashes = full.block_hashes(self.block_size, total)
                else:
                    # output tokens without ids are unique to the request: only the prompt is hashable
                    req.hashes = req.content.block_hashes(self.block_size, req.input_tokens)
        return req.hashes

    def find_cached_prefix(self, req: Request) -> list[int]:
        """Block ids of the longest cached prefix usable by req (at least one token left to compute)."""
        if not self.enable_prefix_caching:
            return []
        hashes = self.ensure_hashes(req)
        if not req.content.has_content:
            return []
        limit = (req.input_tokens + req.num_output_done - 1) // self.block_size
        found = list(map(self.cached.get, hashes[:limit]))  # C-level lookups, then cut at the first miss
        try:
            return found[:found.index(None)]
        except ValueError:
            return found

    def count_lookup(self, req: Request, hit_blocks: int) -> None:
        self.stats.lookups += 1
        self.stats.lookup_blocks += req.num_tokens // self.block_size
        self.stats.hit_blocks += hit_blocks

    # ---- allocation ----
    def _pop_free(self) -> int:
        b = self.free_queue.popleft()
        if self.block_hash[b] is not None:
            self._evict(b)
        return b

    def _evict(self, b: int) -> None:
        """Block b, just taken off the free queue, no longer holds its cached content."""
        h = self.block_hash[b]
        if self.cached.get(h) == b:
            del self.cached[h]
            if self.on_evict is not None:
                self.on_evict(h, b)
        self.block_hash[b] = None
        self.stats.evictions += 1

    def touch(self, blocks: list[int]) -> None:
        """Take a reference on each of `blocks` (distinct ids); free ones leave the free queue."""
        self.free_queue.acquire(self.ref, blocks)

    def count_free(self, blocks: list[int]) -> int:
        """How many of `blocks` sit unreferenced in the free queue (hits that would otherwise be evictable)."""
        refs = self.ref
        n = 0
        for b in blocks:
            if not refs[b]:
                n += 1
        return n

    def blocks_needed(self, req: Request, num_new_tokens: int, num_hit_blocks: int = 0,
                      computed: int | None = None) -> int:
        """Blocks to take from the free queue so req holds `computed` + num_new_tokens tokens.

        `computed` is what is already in HBM for req (default: its num_computed_tokens);
        at admission the caller passes its prefix-hit tokens, as vLLM's allocate_slots does.
        """
        total = (req.num_computed_tokens if computed is None else computed) + num_new_tokens
        need = -(-total // self.block_size)
        return max(0, need - len(req.block_ids) - num_hit_blocks)

    def can_allocate(self, req: Request, num_new_tokens: int, hit_blocks: list[int] | None = None,
                     computed: int | None = None) -> bool:
        hb = hit_blocks or []
        need = self.blocks_needed(req, num_new_tokens, len(hb), computed)
        if need > self.num_free:
            return False
        if not hb or need <= self.num_free - len(hb):
            return True  # fits even if every hit block sat in the free queue: no need to count them
        return need <= self.num_free - self.count_free(hb)

    def allocate(self, req: Request, num_new_tokens: int, hit_blocks: list[int] | None = None,
                 computed: int | None = None) -> bool:
        """Give req room for num_new_tokens more tokens (after any prefix hits). False if no room."""
        done = req.num_computed_tokens if computed is None else computed
        if not hit_blocks and done + num_new_tokens <= len(req.block_ids) * self.block_size:
            return True  # fits in the blocks it holds (most decode steps)
        hb = hit_blocks or []
        if not self.can_allocate(req, num_new_tokens, hb, done):
            return False
        if hb:
            self.touch(hb)
            if not req.block_ids:
                req.num_hashed_blocks = len(hb)  # hits are registered already: cache_full_blocks skips them
            req.block_ids.extend(hb)
        need = self.blocks_needed(req, num_new_tokens, 0, done)
        if need == 1:
            b = self._pop_free()
            self.ref[b] = 1
            req.block_ids.append(b)
        elif need:
            # a prefill chunk takes hundreds of blocks: off the free queue in one pass, then each evicted
            # cached block forgotten in the same order as one _pop_free() per block does
            got = self.free_queue.pop_many(need)
            bh = self.block_hash
            ref = self.ref
            for b in got:
                if bh[b] is not None:
                    self._evict(b)
                ref[b] = 1
            req.block_ids.extend(got)
        return True

    def cache_full_blocks(self, req: Request, num_tokens_computed: int) -> None:
        """Register hashes of req's blocks that are now full of computed tokens."""
        if not self.enable_prefix_caching or not req.hashes:
            return
        n_full = min(num_tokens_computed // self.block_size, len(req.hashes), len(req.block_ids))
        start = req.num_hashed_blocks
        if n_full <= start:
            return
        req.num_hashed_blocks = n_full
        bh = self.block_hash
        cached = self.cached
        on_cache = self.on_cache
        # n_full <= both lengths: the slices are equally long (a prefill chunk fills hundreds of blocks)
        for b, h in zip(req.block_ids[start:n_full], req.hashes[start:n_full], strict=True):
            if bh[b] is not None:
                continue
            bh[b] = h
            if h not in cached:
                cached[h] = b
                if on_cache is not None:
                    on_cache(h, b)

    def free(self, req: Request) -> None:
        self.release(req.block_ids)
        req.block_ids = []
        req.num_hashed_blocks = 0

    def release(self, blocks: list[int]) -> None:
        """Drop one reference on each of `blocks` (distinct ids); unreferenced ones join the free queue."""
        self.free_queue.release(self.ref, blocks)

    def check_invariants(self, live: list[Request]) -> None:
        """Every block is either referenced by exactly ref live requests or free (tests)."""
        counts = [0] * self.num_blocks
        for r in live:
            for b in r.block_ids:
                counts[b] += 1
        for b in range(self.num_blocks):
            if counts[b] != self.ref[b]:
                raise AssertionError(f"block {b}: ref {self.ref[b]} but {counts[b]} holders")
            if (self.ref[b] == 0) != (b in self.free_queue):
                raise AssertionError(f"block {b}: ref {self.ref[b]} inconsistent with free queue")
        for h, b in self.cached.items():
            if self.block_hash[b] != h:
                raise AssertionError(f"cache map points {h} at block {b} holding {self.block_hash[b]}")
