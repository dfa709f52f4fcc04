"""Plot the group benchmark: ``python benchmarks/plot_group.py RESULTS.json OUT.png``.

RESULTS.json is what ``bench_group.py --json`` writes. Needs matplotlib
(``pip install matplotlib``; it is not a dependency of the library).
"""

from __future__ import annotations

import json
import sys

STEPS = [
    ("add", "add n members (one commit)"),
    ("join", "join from Welcome (tree out of band)"),
    ("upd1 create", "first update: create"),
    ("upd1 process", "first update: process"),
    ("steady create", "steady-state update: create"),
    ("steady process", "steady-state update: process"),
    ("msg enc+dec", "1 KiB message: encrypt + decrypt"),
]


def main(argv: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src, out = argv
    with open(src, encoding="utf-8") as f:
        data = json.load(f)
    results = sorted(data["results"].values(), key=lambda r: r["n"])
    sizes = [r["n"] for r in results]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for key, label in STEPS:
        xs = [r["n"] for r in results if key in r]
        ys = [r[key] * 1000 for r in results if key in r]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.set_xlabel("members added in the bulk add (n)")
    ax.set_ylabel("milliseconds (log scale)")
    ax.set_title(f"mls-xmpp group operations, cipher suite {data['cipher_suite']}, "
                 f"{data['cpus']} cores")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
