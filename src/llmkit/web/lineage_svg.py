"""A run's lineage graph as inline SVG, for the run report: raw inputs (with their content hashes) on the left,
the artifacts built from them to the right, and registered versions (with their aliases) at the end.

    g = runs.graph(root, name)                      # nodes and edges, as the dashboard gets them
    g = collapse(g)                                 # many raw files feeding one artifact -> one node
    svg = draw(g, href={node_id: "data/manifest.json", ...})

Layers: an artifact sits one column right of its deepest input (longest path); a raw input sits just left of
the first artifact that reads it, so an eval's task file is drawn beside the eval, not beside the data. Within a
column, nodes are ordered by the mean row of their neighbours, a few sweeps (the barycenter heuristic), which
keeps the edges of a pipeline's chain nearly straight.
"""

from __future__ import annotations

from html import escape

from llmkit.eval.svg import INK, MUTED, frame

# fill, stroke per node kind; anything else is drawn as a generic artifact
COLORS = {"input": ("#f3f4f6", "#9ca3af"), "model": ("#dbeafe", "#2563eb"), "dataset": ("#dcfce7", "#16a34a"),
          "eval": ("#fef3c7", "#d97706"), "rag-index": ("#ede9fe", "#7c3aed"), "registry": ("#111827", "#111827")}
NODE_W, NODE_H, COL_GAP, ROW_GAP = 176, 42, 54, 14


def collapse(g: dict, most: int = 3) -> dict:
    """Raw inputs read by one artifact only, when it has more than `most` of them, become one node ("5 files")."""
    children: dict[str, set[str]] = {}
    for e in g["edges"]:
        children.setdefault(e["from"], set()).add(e["to"])
    kind = {n["id"]: n["kind"] for n in g["nodes"]}
    only: dict[str, list[str]] = {}
    for nid, kids in children.items():
        if kind.get(nid) == "input" and len(kids) == 1:
            only.setdefault(next(iter(kids)), []).append(nid)
    merged: dict[str, str] = {}
    nodes = [n for n in g["nodes"]]
    for target, ids in only.items():
        if len(ids) <= most:
            continue
        group = f"{target}#inputs"
        labels = sorted(n["label"] for n in g["nodes"] if n["id"] in ids)
        nodes.append({"id": group, "label": f"{len(ids)} files", "kind": "input", "sub": ", ".join(labels),
                      "detail": "\n".join(n["detail"] for n in g["nodes"] if n["id"] in ids)})
        merged.update({i: group for i in ids})
    nodes = [n for n in nodes if n["id"] not in merged]
    edges, seen = [], set()
    for e in g["edges"]:
        a = merged.get(e["from"], e["from"])
        if (a, e["to"]) not in seen:
            seen.add((a, e["to"]))
            edges.append({**e, "from": a, "name": "files" if a != e["from"] else e["name"]})
    return {**g, "nodes": nodes, "edges": edges}


def _layers(nodes: list[dict], edges: list[dict]) -> dict[str, int]:
    parents: dict[str, list[str]] = {n["id"]: [] for n in nodes}
    for e in edges:
        parents.setdefault(e["to"], []).append(e["from"])
    memo: dict[str, int] = {}

    def depth(nid: str, stack: frozenset = frozenset()) -> int:  # longest path from a node without inputs
        if nid not in memo:
            ps = [p for p in parents.get(nid, []) if p not in stack]
            memo[nid] = 1 + max((depth(p, stack | {nid}) for p in ps), default=-1)
        return memo[nid]

    layer = {n["id"]: depth(n["id"]) for n in nodes}
    kids: dict[str, list[str]] = {}
    for e in edges:
        kids.setdefault(e["from"], []).append(e["to"])
    for n in nodes:  # a raw input: just left of its first reader
        if not parents.get(n["id"]) and kids.get(n["id"]):
            layer[n["id"]] = min(layer[k] for k in kids[n["id"]]) - 1
    low = min(layer.values(), default=0)
    return {k: v - low for k, v in layer.items()}


def _order(cols: dict[int, list[str]], edges: list[dict], sweeps: int = 4) -> None:
    nbrs: dict[str, list[str]] = {}
    for e in edges:
        nbrs.setdefault(e["from"], []).append(e["to"])
        nbrs.setdefault(e["to"], []).append(e["from"])
    for _ in range(sweeps):
        row = {nid: i for c in cols.values() for i, nid in enumerate(c)}
        for c in sorted(cols):
            cols[c].sort(key=lambda nid: (sum(row[x] for x in nbrs.get(nid, [])) / len(nbrs[nid])
                                          if nbrs.get(nid) else row[nid]))
            row.update({nid: i for i, nid in enumerate(cols[c])})


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def draw(g: dict, href: dict[str, str] | None = None) -> str:
    """The graph `g` ({nodes: [{id, label, kind, detail, hash?, sub?}], edges: [{from, to, name}]}) as an SVG; a node
    with an entry in `href` is a link (its manifest)."""
    nodes, edges, href = g["nodes"], g["edges"], href or {}
    if not nodes:
        return ""
    layer = _layers(nodes, edges)
    cols: dict[int, list[str]] = {}
    for n in sorted(nodes, key=lambda n: (n["kind"] != "input", n["label"])):
        cols.setdefault(layer[n["id"]], []).append(n["id"])
    _order(cols, edges)
    tallest = max(len(c) for c in cols.values())
    h = tallest * (NODE_H + ROW_GAP) + ROW_GAP
    w = (max(cols) + 1) * (NODE_W + COL_GAP) - COL_GAP + 16
    pos = {}
    for c, ids in cols.items():
        top = (h - len(ids) * (NODE_H + ROW_GAP) + ROW_GAP) / 2  # each column centred
        for i, nid in enumerate(ids):
            pos[nid] = (8 + c * (NODE_W + COL_GAP), top + i * (NODE_H + ROW_GAP))
    out = ['<defs><marker id="lineage-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" '
           f'orient="auto"><path d="M0,0L8,4L0,8z" fill="{MUTED}"/></marker></defs>']
    for e in edges:
        (x0, y0), (x1, y1) = pos[e["from"]], pos[e["to"]]
        a, b = (x0 + NODE_W, y0 + NODE_H / 2), (x1 - 2, y1 + NODE_H / 2)
        mid = (a[0] + b[0]) / 2
        out.append(f'<path class="edge" d="M{a[0]:.1f},{a[1]:.1f}C{mid:.1f},{a[1]:.1f} {mid:.1f},{b[1]:.1f} '
                   f'{b[0]:.1f},{b[1]:.1f}" fill="none" stroke="{MUTED}" stroke-opacity="0.7" stroke-width="1.3" '
                   f'marker-end="url(#lineage-arrow)"><title>{escape(e.get("name") or "")}</title></path>')
    for n in nodes:
        x, y = pos[n["id"]]
        fill, stroke = COLORS.get(n["kind"], ("#f1f5f9", "#475569"))
        ink = "#f9fafb" if n["kind"] == "registry" else INK
        sub = n.get("sub") or (f'sha256 {n.get("hash")}' if n["kind"] == "input" and n.get("hash")
                               else f'{n["kind"]} · {n["hash"]}' if n.get("hash") else n["kind"])
        node = (f'<rect class="node" data-kind="{escape(n["kind"])}" x="{x}" y="{y:.1f}" width="{NODE_W}" '
                f'height="{NODE_H}" rx="6" fill="{fill}" stroke="{stroke}" stroke-width="1.4"/>'
                f'<text x="{x + 9}" y="{y + 17:.1f}" font-size="12" font-weight="600" fill="{ink}">'
                f'{escape(_clip(n["label"], 23))}</text>'
                f'<text x="{x + 9}" y="{y + 33:.1f}" font-size="10.5" fill="{ink}" fill-opacity="0.75">'
                f'{escape(_clip(sub, 30))}</text>')
        title = f'<title>{escape(n.get("detail") or n["label"])}</title>'
        if n["id"] in href:
            out.append(f'<a class="node" href="{escape(href[n["id"]])}">{title}{node}</a>')
        else:
            out.append(f'<g class="node">{title}{node}</g>')
    return frame(w, int(h), "lineage", "".join(out), "lineage: raw inputs → artifacts → registered versions")
