"""A scripted Crafter player that climbs the tech tree up to the diamond, for varied gameplay data.

Why it is built this way:
- It reads the true game state (`env._world`, `env._player`), not pixels: it is a data source, not
  an agent under study, and the full 64×64 map makes every goal a shortest-path problem.
- Goals are chosen by a fixed priority: fight an adjacent zombie/skeleton > drink/eat/sleep (with
  hysteresis, topped up before nightfall) > the next tech-tree step (wood → table → wood pickaxe →
  stone → stone pickaxe → coal, iron, stone → table + furnace → iron pickaxe → diamond) > varied
  after-game play (swords, saplings and plants, zombies, more resources).
- Navigation is Dijkstra (scipy) over the whole map where minable tiles are passable at a higher
  cost (they are mined on the way); tiles next to lava are penalised, lava is never entered.
  The path is cached and only recomputed when it breaks, so `act` stays well below a millisecond.
- Nights are slept in a sealed pocket: the player digs two tiles into solid rock, steps back and
  places stone on the entrance, because zombies only walk on grass/sand/path and deal 7 damage to a
  sleeper. (Moving only turns the player when the tile ahead is blocked, so a free tile can only be
  faced by arriving from the opposite side; the two-tile pocket makes that possible.)
- `skill` mixes in uniformly random actions from a private seeded generator, so the behaviour is a
  deterministic function of (seed, world seed) and skill 0 is the random player.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from crafter import objects
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from dreamer4.episodes.actions import CRAFTER_ACTIONS

ACT = {name: i for i, name in enumerate(CRAFTER_ACTIONS)}
MOVES = {(-1, 0): ACT["move_left"], (1, 0): ACT["move_right"], (0, -1): ACT["move_up"]}
MOVES[(0, 1)] = ACT["move_down"]
WALKABLE = ("grass", "sand", "path")
SOLID = ("stone", "tree", "coal", "iron", "diamond", "table", "furnace")  # blocks zombies & arrows
TOOL = {"stone": "wood_pickaxe", "coal": "wood_pickaxe", "iron": "stone_pickaxe"}
TOOL["diamond"] = "iron_pickaxe"
BIG = 1e6
Pos = tuple[int, int]


@functools.lru_cache(maxsize=4)
def _grid_edges(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR structure (rows, cols, indptr) of the 4-neighbour grid graph, row-major by source."""
    x, y = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rows, cols = [], []
    for dx, dy in MOVES:
        nx, ny = x + dx, y + dy
        ok = (nx >= 0) & (nx < h) & (ny >= 0) & (ny < w)
        rows.append((x * w + y)[ok])
        cols.append((nx * w + ny)[ok])
    r, c = np.concatenate(rows), np.concatenate(cols)
    order = np.lexsort((c, r))
    return r[order], c[order], np.searchsorted(r[order], np.arange(h * w + 1))


def _shift(a: np.ndarray, dx: int, dy: int, fill: bool) -> np.ndarray:
    """b[x, y] = a[x + dx, y + dy] (fill outside the map)."""
    h, w = a.shape
    p = np.pad(a, 3, constant_values=fill)
    return p[3 + dx : 3 + dx + h, 3 + dy : 3 + dy + w]


class ScriptedPlayer:
    """Plays Crafter from the true state; see the module docstring."""

    def __init__(self, skill: float = 1.0, seed: int = 0) -> None:
        if not 0.0 <= skill <= 1.0:
            raise ValueError(f"skill must be in [0, 1], got {skill}")
        self.skill = float(skill)
        self._rng = np.random.default_rng(seed)
        self._ids: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        self._mode: str | None = None
        self._path: list[Pos] = []
        self._key: Any = None
        self._age = 0
        self._idle = 0
        self._site: dict[Pos, Pos] = {}
        self._dig: tuple[Pos, Pos] | None = None
        self._failed: dict[Any, int] = {}
        self._t = 0
        self._last_pos: Pos = (-1, -1)

    # ------------------------------------------------------------------ entry point
    def act(self, env: Any) -> int:
        if self.skill < 1.0 and self._rng.random() >= self.skill:
            return int(self._rng.integers(len(CRAFTER_ACTIONS)))
        return int(self._plan(env))

    def _plan(self, env: Any) -> int:
        w, p = env._world, env._player
        if self._ids.get("grass") != w._mat_ids.get("grass") or not self._ids:
            self._ids = {k: v for k, v in w._mat_ids.items() if k is not None}
        self.w, self.p, self.mat, self.inv = w, p, w._mat_map, p.inventory
        self.pos = pos = (int(p.pos[0]), int(p.pos[1]))
        self._idle = self._idle + 1 if pos == self._last_pos else 0
        self._last_pos = pos
        self._t += 1
        if p.sleeping:
            return ACT["sleep"]
        self.hostiles: list[Pos] = []
        self.cows: list[Pos] = []
        self.ripe: list[Pos] = []
        for obj in w.objects:
            q = (int(obj.pos[0]), int(obj.pos[1]))
            if abs(q[0] - pos[0]) + abs(q[1] - pos[1]) > 24:
                continue
            if isinstance(obj, objects.Zombie | objects.Skeleton):
                self.hostiles.append(q)
            elif isinstance(obj, objects.Cow):
                self.cows.append(q)
            elif isinstance(obj, objects.Plant) and obj.ripe:
                self.ripe.append(q)
        for q in self.hostiles:  # an adjacent zombie/skeleton hits back: fight it first
            d = (q[0] - pos[0], q[1] - pos[1])
            if abs(d[0]) + abs(d[1]) == 1:
                return self._face_do(d)
        action = self._needs(env)
        if action is None:
            action = self._tech()
        if action is None or (self._idle > 30 and self._mode != "sleep"):
            self._idle = 0  # nothing to do, or stuck: wander
            action = self._wander()
        return action

    # ------------------------------------------------------------------ survival
    def _needs(self, env: Any) -> int | None:
        inv, daylight = self.inv, self.w.daylight
        dusk = 110 <= env._step % 300 < 150
        dark = daylight < 0.45
        if self._mode == "drink" and inv["drink"] >= 9:
            self._mode = None
        if self._mode == "eat" and inv["food"] >= 8:
            self._mode = None
        if self._mode == "sleep" and not dark and inv["energy"] >= 8 and inv["health"] >= 7:
            self._mode, self._dig = None, None
        hurt = inv["health"] <= 3 and min(inv["food"], inv["drink"]) >= 2
        if self._mode in (None, "eat") and hurt and inv["wood_pickaxe"]:
            self._mode = "sleep"  # rest sealed in before looking for food
        if self._mode in (None, "sleep"):
            if inv["drink"] <= (1 if self._mode else 4 + 2 * dusk):
                self._mode = "drink"
            elif inv["food"] <= (1 if self._mode else 4 + 2 * dusk):
                self._mode = "eat"
            elif inv["energy"] <= 2 or inv["health"] <= 4 or (dark and self._mode is None):
                self._mode = "sleep"
        if self._mode == "drink":
            action = self._goto(("drink",), self.mat == self._ids["water"])
        elif self._mode == "eat":
            targets = np.zeros(self.mat.shape, bool)
            for q in self.cows + self.ripe:
                targets[q] = True
            action = self._goto(("eat",), targets)
        elif self._mode == "sleep":
            action = self._sleep()
        else:
            return None
        if action is None and self._mode != "sleep":
            self._mode = None
        return action

    def _region(self, start: Pos, blocked: Pos | None = None, cap: int = 10) -> bool:
        """Whether the zombie-walkable area around `start` is closed (≤ cap tiles, no enemy)."""
        walk = self._walk
        seen, todo = {start}, [start]
        while todo:
            x, y = todo.pop()
            if (x, y) in self.hostiles and (x, y) != start:
                return False
            for dx, dy in MOVES:
                q = (x + dx, y + dy)
                if q in seen or q == blocked or not self._inside(q) or not walk[q]:
                    continue
                seen.add(q)
                if len(seen) > cap:
                    return False
                todo.append(q)
        return True

    def _sleep(self) -> int | None:
        pos, inv = self.pos, self.inv
        self._walk = np.isin(self.mat, [self._ids[m] for m in WALKABLE])
        if self._region(pos):
            return ACT["sleep"] if inv["energy"] < 9 else ACT["noop"]
        front = (pos[0] + self.p.facing[0], pos[1] + self.p.facing[1])
        if inv["stone"] and self._free(front) and self._region(pos, blocked=front):
            return ACT["place_stone"]
        if inv["stone"]:
            for d in MOVES:
                n = (pos[0] + d[0], pos[1] + d[1])
                g = (n[0] + d[0], n[1] + d[1])
                if self._free(n) and self._free(g) and self._region(n, blocked=g):
                    return self._move(d)
        if not inv["wood_pickaxe"]:
            return ACT["sleep"] if inv["energy"] <= 1 else None
        if self._dig is None and pos in self._site:
            self._dig = (pos, self._site[pos])
        if self._dig is not None:  # dig two tiles into the rock; the rules above then seal it
            a, d = self._dig
            s = (a[0] + d[0], a[1] + d[1])
            if pos in (a, s):
                ahead = (pos[0] + d[0], pos[1] + d[1])
                return self._move(d) if self._walk[ahead] else self._face_do(d)
            self._dig = None
        self._site = self._find_sites()
        targets = np.zeros(self.mat.shape, bool)
        for a in self._site:
            targets[a] = True
        action = self._goto(("site",), targets, interact=False)
        if action is None and pos in self._site:
            return self._sleep()
        return action if action is not None or inv["energy"] > 1 else ACT["sleep"]

    def _find_sites(self) -> dict[Pos, Pos]:
        ids, mat = self._ids, self.mat
        stone = mat == ids["stone"]
        solid = np.isin(mat, [ids[m] for m in SOLID])
        ok = np.zeros(mat.shape, bool)
        sites: dict[Pos, Pos] = {}
        for dx, dy in MOVES:
            px, py = dy, dx  # perpendicular
            good = self._walk & _shift(stone, dx, dy, False) & _shift(stone, 2 * dx, 2 * dy, False)
            good &= _shift(solid, 3 * dx, 3 * dy, True)
            for k in (1, 2):
                for s in (1, -1):
                    good &= _shift(solid, k * dx + s * px, k * dy + s * py, True)
            for x, y in zip(*np.nonzero(good & ~ok), strict=True):
                sites[(int(x), int(y))] = (dx, dy)
            ok |= good
        return sites

    # ------------------------------------------------------------------ tech tree
    def _near(self, name: str) -> bool:
        return self._near_at(self.pos, name)

    def _craft(self, item: str, uses: dict[str, int], furnace: bool = False) -> int | None:
        """Collect what `item` and its stations need, place the stations, then make it."""
        inv, table = self.inv, self._near("table")
        full = dict(uses)  # enough for new stations too, so the target does not flip-flop
        full["wood"] = full.get("wood", 0) + 2
        if furnace:
            full["stone"] = full.get("stone", 0) + 4
        have = all(inv[k] >= v for k, v in uses.items())
        if have and table and (not furnace or self._near("furnace")):
            return ACT[f"make_{item}"]
        if have and table and inv["stone"] >= uses.get("stone", 0) + 4:
            return self._place("furnace", "table")
        tables = self.mat == self._ids["table"]
        if have and not furnace and not table and tables.any():
            action = self._goto(("table",), tables)
            if action is not None and len(self._path) <= 20:
                return action
        missing = [k for k, v in full.items() if inv[k] < v]
        if missing:
            return self._collect(missing)
        return self._place("table", None) if not table else self._place("furnace", "table")

    def _collect(self, names: list[str]) -> int | None:
        mats = {"wood": "tree", "sapling": "grass"}
        ids = [self._ids[mats.get(n, n)] for n in names]
        return self._goto(("collect", *names), np.isin(self.mat, ids))

    def _tech(self) -> int | None:
        inv, (x, y) = self.inv, self.pos
        if inv["wood"] < 9:  # chop an adjacent tree on the way
            for d in MOVES:
                q = (x + d[0], y + d[1])
                if self._inside(q) and self.mat[q] == self._ids["tree"]:
                    return self._face_do(d)
        if not inv["wood_pickaxe"]:
            if inv["wood"] < 9 and not self._near("table"):
                return self._collect(["wood"])
            return self._craft("wood_pickaxe", {"wood": 1})
        if not inv["wood_sword"] and inv["wood"] >= 6:
            return self._craft("wood_sword", {"wood": 1})
        if not inv["stone_pickaxe"]:
            return self._craft("stone_pickaxe", {"wood": 1, "stone": 1})
        if not inv["stone_sword"] and inv["wood"] >= 4 and self._near("table"):
            return self._craft("stone_sword", {"wood": 1, "stone": 1})
        if not inv["iron_pickaxe"]:
            uses = {"wood": 1, "coal": 1, "iron": 1, "stone": 1}
            return self._craft("iron_pickaxe", uses, furnace=True)
        if not inv["diamond"] and (self.mat == self._ids["diamond"]).any():
            action = self._collect(["diamond"])
            if action is not None:
                return action
        return self._after()

    def _after(self) -> int | None:
        """After the diamond: swords, plants, zombies and more resources, for varied data."""
        inv = self.inv
        for sword, uses in (("wood_sword", {"wood": 1}), ("stone_sword", {"wood": 1, "stone": 1})):
            if not inv[sword]:
                return self._craft(sword, uses)
        if not inv["iron_sword"]:
            return self._craft("iron_sword", {"wood": 1, "coal": 1, "iron": 1}, furnace=True)
        if self.ripe:
            targets = np.zeros(self.mat.shape, bool)
            for q in self.ripe:
                targets[q] = True
            action = self._goto(("ripe",), targets)
            if action is not None:
                return action
        if inv["sapling"]:
            return self._place("plant", None)
        near = [q for q in self.hostiles if abs(q[0] - self.pos[0]) + abs(q[1] - self.pos[1]) < 8]
        if near and inv["health"] >= 6:
            targets = np.zeros(self.mat.shape, bool)
            for q in near:
                targets[q] = True
            return self._goto(("hunt",), targets)
        if self._key is None or self._key[0] != "collect" or self._age > 150:
            options = [n for n in ("sapling", "wood", "stone", "coal", "iron") if inv[n] < 9]
            self._key = ("collect", str(self._rng.choice(options or ["sapling"])))
            self._age = 0
        return self._collect([self._key[1]])

    def _place(self, name: str, keep: str | None) -> int:
        """Place `name` on the faced tile, first making a placeable tile ahead if needed."""
        pos, facing = self.pos, tuple(self.p.facing)
        allowed = ("grass",) if name == "plant" else WALKABLE
        front = (pos[0] + facing[0], pos[1] + facing[1])
        if self._free(front, allowed):
            return ACT[f"place_{name}"]
        options = []
        for d in MOVES:
            n = (pos[0] + d[0], pos[1] + d[1])
            if not self._inside(n):
                continue
            m = self.w._mat_names[self.mat[n]]
            if m == "tree" or (m in TOOL and self.inv[TOOL[m]]):
                options.append((0 if d == facing else 1, d, "dig"))
            elif self._free(n) and (keep is None or self._near_at(n, keep)):
                options.append((2, d, "move"))
        if not options:
            return self._wander()
        _, d, how = min(options)
        return self._face_do(d) if how == "dig" else self._move(d)

    def _near_at(self, q: Pos, name: str) -> bool:
        sub = self.mat[max(0, q[0] - 1) : q[0] + 2, max(0, q[1] - 1) : q[1] + 2]
        return bool((sub == self._ids[name]).any())

    # ------------------------------------------------------------------ navigation
    def _inside(self, q: Pos) -> bool:
        return 0 <= q[0] < self.mat.shape[0] and 0 <= q[1] < self.mat.shape[1]

    def _free(self, q: Pos, allowed: tuple[str, ...] = WALKABLE) -> bool:
        if not self._inside(q) or self.w._obj_map[q]:
            return False
        return self.w._mat_names[self.mat[q]] in allowed

    def _move(self, d: Pos) -> int:
        q = (self.pos[0] + d[0], self.pos[1] + d[1])
        if self._inside(q) and self.mat[q] == self._ids["lava"]:
            return ACT["noop"]  # never step into lava
        return MOVES[d]

    def _face_do(self, d: Pos) -> int:
        return ACT["do"] if tuple(self.p.facing) == d else self._move(d)

    def _wander(self) -> int:
        dirs = [d for d in MOVES if self._free((self.pos[0] + d[0], self.pos[1] + d[1]))]
        if not dirs:
            return ACT["noop"]
        return self._move(dirs[int(self._rng.integers(len(dirs)))])

    def _costs(self, targets: np.ndarray) -> np.ndarray:
        ids, inv = self._ids, self.inv
        lut = np.full(max(ids.values()) + 1, np.inf)
        for m in WALKABLE:
            lut[ids[m]] = 1.0
        lut[ids["tree"]] = 4.0
        for m, tool in TOOL.items():
            if inv[tool]:
                lut[ids[m]] = 3.0
        cost = lut[self.mat]
        lava = self.mat == ids["lava"]
        near_lava = lava.copy()
        for dx, dy in MOVES:
            near_lava |= _shift(lava, dx, dy, False)
        cost[near_lava] += 4.0
        for idx in np.flatnonzero(self.w._obj_map):
            obj = self.w._objects[self.w._obj_map.flat[idx]]
            if isinstance(obj, objects.Zombie | objects.Skeleton):
                cost.flat[idx] += 6.0
                if isinstance(obj, objects.Skeleton):  # stay out of its line of fire
                    x, y = divmod(int(idx), cost.shape[1])
                    cost[max(0, x - 4) : x + 5, y] += 3.0
                    cost[x, max(0, y - 4) : y + 5] += 3.0
            elif not isinstance(obj, objects.Player | objects.Arrow):
                cost.flat[idx] = np.inf
        cost[targets] = 1.0
        return cost

    def _plan_path(self, targets: np.ndarray) -> list[Pos]:
        h, w = self.mat.shape
        rows, cols, indptr = _grid_edges(h, w)
        cost = self._costs(targets).ravel()
        src = self.pos[0] * w + self.pos[1]
        through = np.isfinite(cost) & ~targets.ravel()
        through[src] = True
        weight = np.where(through[rows] & np.isfinite(cost[cols]), cost[cols], BIG)
        graph = csr_matrix((weight, cols, indptr), shape=(h * w, h * w))
        dist, pred = dijkstra(graph, indices=src, return_predecessors=True, limit=BIG / 2)
        dist = np.where(targets.ravel(), dist, np.inf)
        dist[src] = np.inf
        best = int(np.argmin(dist))
        if not np.isfinite(dist[best]):
            return []
        path = [best]
        while path[-1] != src:
            path.append(int(pred[path[-1]]))
        return [(i // w, i % w) for i in reversed(path)]

    def _goto(self, key: Any, targets: np.ndarray, interact: bool = True) -> int | None:
        """Step along a shortest path to the nearest target; `do` on it if `interact`."""
        pos, path = self.pos, self._path
        if key != self._key:
            self._key, self._age, path = key, 0, []
        if self._failed.get(key, -99) > self._t - 50:
            return None
        self._age += 1
        if pos in path:
            path = path[path.index(pos) :]
        ok = len(path) > 1 and path[0] == pos and bool(targets[path[-1]]) and self._age < 40
        if ok:
            ok = self._step_cost(path[1], path[1] == path[-1]) < np.inf
        if not ok:
            if not interact and targets[pos]:
                self._path = [pos]
                return None
            path = self._plan_path(targets)
            self._age = 0
            if len(path) < 2:
                self._path, self._failed[key] = [], self._t
                return None
        self._path = path
        nxt, d = path[1], (path[1][0] - pos[0], path[1][1] - pos[1])
        if nxt == path[-1] and interact:
            return self._face_do(d)
        if self._free(nxt):
            return self._move(d)
        return self._face_do(d)  # mine, chop, or hit the creature in the way

    def _step_cost(self, q: Pos, last: bool) -> float:
        obj = self.w._objects[self.w._obj_map[q]]
        if obj is not None and not isinstance(obj, objects.Zombie | objects.Skeleton):
            return 1.0 if last else np.inf
        m = self.w._mat_names[self.mat[q]]
        if last or m in WALKABLE or m == "tree" or (m in TOOL and self.inv[TOOL[m]]):
            return 1.0
        return np.inf
