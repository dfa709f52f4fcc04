"""Plot a benchmark's JSON results: ``python benchmarks/plot.py RESULTS.json OUT.png``.

RESULTS.json is what ``bench_group.py --json``, ``bench_tree.py --json``,
``bench_xmpp.py --json``, ``bench_store.py --json``, ``bench_fleet.py --json`` (or
several of its runs as ``{"benchmark": "fleet", "runs": [...]}``) or
``bench_floor.py --json`` writes; which one is recognised from its content
(``detect``). The figures:

* group: time of each group operation against the group size, log-log;
* tree: time of validating a received tree, creating and applying an
  UpdatePath and re-hashing, against the tree size, log-log; memory and
  encoded size on a second panel;
* xmpp: the distribution (CDF) of raw and MLS round trips, the throughputs,
  and the CPU time per message they cost;
* store: the time to persist a group's state per application message (old:
  the whole state, new: the ratchets only) against the group size, log-log;
  per Commit and at start-up on a second panel;
* fleet: the fan-out latency (CDF) per number of devices, and the group's
  creation and a Commit's convergence;
* floor: each core operation as a multiple of its cryptographic floor.

Needs matplotlib (``pip install -e '.[bench]'``; it is not a dependency of
the library).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Group benchmark: (key in bench_group's results, legend label).
GROUP_STEPS = [
    ("add", "add n members (one commit)"),
    ("join", "join from Welcome (tree out of band)"),
    ("upd1 create", "first update: create"),
    ("upd1 process", "first update: process"),
    ("steady create", "steady-state update: create"),
    ("steady process", "steady-state update: process"),
    ("msg enc+dec", "1 KiB message: encrypt + decrypt"),
]

#: Tree benchmark, time panel: (key in bench_tree's results, label, line style).
TREE_STEPS = [
    ("validate", "validate a received tree (decode + all checks)", "-"),
    ("signatures", "  of which leaf signatures", "--"),
    ("create path", "create an UpdatePath (committer)", "-"),
    ("apply path", "apply an UpdatePath (receiver)", "-"),
    ("next hash", "root tree hash after one leaf change", "-"),
]

#: Tree benchmark, memory panel: (key, label).
TREE_MEMORY = [
    ("peak MiB", "peak memory: decode + tree hash"),
    ("size MiB", "encoded tree (ratchet_tree)"),
]


#: Store benchmark, message panel: (step in bench_store's results, label, colour).
STORE_MESSAGE_STEPS = [
    ("later msg old", "old: encode_group + save_group (whole state)", "tab:red"),
    ("first msg new", "new: encode_ratchets + save_ratchets, sender's 1st in the epoch",
     "tab:orange"),
    ("later msg new", "new: encode_ratchets + save_ratchets, later message", "tab:blue"),
    ("position", "save_position only (echo of an own message)", "tab:gray"),
]

#: Store benchmark, second panel: (getter of a mode's min/median, label, colour, style).
STORE_OTHER: list[tuple[Callable[[dict[str, Any], str], dict[str, float]], str, str, str]] = [
    (lambda r, m: r["steps"]["commit old"]["total"][m], "Commit, old: whole state",
     "tab:red", "-"),
    (lambda r, m: r["steps"]["commit new"]["total"][m], "Commit, new: base + ratchets",
     "tab:blue", "-"),
    (lambda r, m: r["load"]["whole"]["total"][m], "start-up, old: load + decode_group",
     "tab:red", ":"),
    (lambda r, m: r["load"]["parts"]["total"][m], "start-up, new: load + decode_group_parts",
     "tab:blue", ":"),
]


def detect(data: dict[str, Any]) -> str:
    """``"group"``, ``"tree"``, ``"xmpp"``, ``"store"``, ``"fleet"`` or ``"floor"``:
    which benchmark wrote ``data``."""
    kind = data.get("benchmark")
    if kind in ("bench_group", "bench_tree", "bench_xmpp", "bench_store"):
        return str(kind).removeprefix("bench_")
    if kind in ("fleet", "floor"):
        return str(kind)
    # bench_group.py writes no "benchmark" key; its per-size results have "add"
    results = data.get("results", {})
    if isinstance(results, dict) and results and all(
            isinstance(r, dict) and "add" in r for r in results.values()):
        return "group"
    raise ValueError("not a JSON file written by bench_group.py, bench_tree.py, "
                     "bench_xmpp.py or bench_store.py with --json")


def by_size(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-size results of a group or tree run, smallest first."""
    return sorted(data["results"].values(), key=lambda r: r["n"])


def log_log_axes(ax: Any, sizes: list[int], xlabel: str, ylabel: str) -> None:
    """Log-scaled axes with one labelled tick per measured size."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.tick_params(axis="x", which="minor", labelbottom=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)


def plot_group(data: dict[str, Any], plt: Any) -> Any:
    """Every group operation against n, milliseconds, log-log."""
    results = by_size(data)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for key, label in GROUP_STEPS:
        xs = [r["n"] for r in results if key in r]
        ys = [r[key] * 1000 for r in results if key in r]
        ax.plot(xs, ys, marker="o", label=label)
    log_log_axes(ax, [r["n"] for r in results], "members added in the bulk add (n)",
                 "milliseconds (log scale)")
    ax.set_title(f"mls-xmpp group operations, cipher suite {data['cipher_suite']}, "
                 f"{data['cpus']} cores")
    ax.legend(fontsize=8)
    return fig


def plot_tree(data: dict[str, Any], plt: Any) -> Any:
    """Left: the tree operations against n (ms); right: memory and size (MiB)."""
    results = by_size(data)
    sizes = [r["n"] for r in results]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5), dpi=110,
                                     gridspec_kw={"width_ratios": [3, 2]})
    for key, label, style in TREE_STEPS:
        ax_t.plot(sizes, [r[key] * 1000 for r in results], marker="o", linestyle=style,
                  label=label.strip())
    log_log_axes(ax_t, sizes, "members in the full tree (n)", "milliseconds (log scale)")
    ax_t.set_title("time")
    ax_t.legend(fontsize=8)
    for key, label in TREE_MEMORY:
        ax_m.plot(sizes, [r[key] for r in results], marker="s", label=label)
    log_log_axes(ax_m, sizes, "members in the full tree (n)", "MiB (log scale)")
    ax_m.set_title("memory")
    ax_m.legend(fontsize=8)
    fig.suptitle(f"mls-xmpp ratchet tree, cipher suite {data['cipher_suite']}, "
                 f"{data['cpus']} cores")
    return fig


def cdf(values: list[float]) -> tuple[list[float], list[float]]:
    """Points of the empirical distribution function of ``values`` (percent)."""
    xs = sorted(values)
    return xs, [100.0 * (i + 1) / len(xs) for i in range(len(xs))]


def bar_labels(ax: Any, bars: Any, fmt: str) -> None:
    """Write each bar's height above it."""
    for bar in bars:
        ax.annotate(fmt.format(bar.get_height()),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)


def plot_xmpp(data: dict[str, Any], plt: Any) -> Any:
    """Latency CDFs, throughputs and CPU per message of one bench_xmpp run."""
    r = data["results"]
    raw, mls, ten = r["raw"], r["mls"], r["mls_ten"]
    if "latency_samples_ms" not in raw:
        raise ValueError("this bench_xmpp JSON has no latency samples (written before "
                         "'latency_samples_ms' was added); run bench_xmpp.py --json again")
    fig, (ax_l, ax_t, ax_c) = plt.subplots(1, 3, figsize=(15, 5), dpi=110,
                                           gridspec_kw={"width_ratios": [3, 2, 2]})
    for name, part in (("raw groupchat round trip", raw), ("MLS send -> decrypted", mls)):
        xs, ys = cdf(part["latency_samples_ms"])
        lat = part["latency"]
        ax_l.step(xs, ys, where="post",
                  label=f"{name} (median {lat['median_ms']:.2f}, p95 {lat['p95_ms']:.2f} ms)")
    ax_l.set_xlim(left=0)
    ax_l.set_xlabel("milliseconds")
    ax_l.set_ylabel("% of messages at most this long")
    ax_l.set_title(f"latency, {raw['latency']['count']} sequential messages each")
    ax_l.grid(True, alpha=0.3)
    ax_l.legend(fontsize=8, loc="lower right")

    steps = [
        ("raw\n1 sender", raw["throughput_one_sender"]),
        ("MLS\n1 sender", mls["throughput_one_sender"]),
        # where the run has them: the n send() calls at once, and send(durable=False)
        *((("MLS\n1 sender\nat once", mls["throughput_one_sender_burst"]),)
          if "throughput_one_sender_burst" in mls else ()),
        *((("MLS\n1 sender\ndurable=False", mls["throughput_one_sender_nodurable"]),)
          if "throughput_one_sender_nodurable" in mls else ()),
        ("MLS\n10 senders\nall decrypt", ten["throughput_ten_senders"]),
        ("MLS\n10 senders\n1 decrypts", ten["throughput_ten_senders_receiver_only"]),
    ]
    names = [name for name, _ in steps]
    colors = ["tab:gray", *["tab:blue"] * (len(steps) - 3), "tab:orange", "tab:green"]
    bars = ax_t.bar(names, [t["msgs_per_s"] for _, t in steps], color=colors)
    bar_labels(ax_t, bars, "{:.0f}")
    ax_t.margins(y=0.1)
    ax_t.set_ylabel("messages per second")
    ax_t.set_title("throughput")
    ax_t.tick_params(axis="x", labelsize=7)

    clients = [t["clients_cpu_ms_per_msg"] for _, t in steps]
    prosody = [t["prosody_cpu_ms_per_msg"] for _, t in steps]
    ax_c.bar(names, clients, label="clients (this process, every member)", color="tab:blue")
    bars = ax_c.bar(names, prosody, bottom=clients, label="Prosody", color="tab:gray")
    for bar, total in zip(bars, [c + p for c, p in zip(clients, prosody, strict=True)],
                          strict=True):
        ax_c.annotate(f"{total:.2f}", (bar.get_x() + bar.get_width() / 2, total),
                      ha="center", va="bottom", fontsize=8)
    ax_c.margins(y=0.25)  # room for the legend above the bars
    ax_c.set_ylabel("CPU milliseconds per message")
    ax_c.set_title("CPU per message (throughput steps)")
    ax_c.tick_params(axis="x", labelsize=7)
    ax_c.legend(fontsize=8, loc="upper left")

    env = data["environment"]
    fig.suptitle(f"mls-xmpp over XMPP (loopback Prosody, storage {data['args']['storage']}), "
                 f"{env['cpus']} cores, slixmpp {env['slixmpp']}")
    return fig


def plot_store(data: dict[str, Any], plt: Any) -> Any:
    """Left: persisting per application message against n; right: per Commit, start-up.

    Minimum over the repeats, milliseconds, log-log; plain databases solid
    (left) and encrypted ones (AES-256-GCM at rest) dashed, when measured.
    """
    results = by_size(data)
    sizes = [r["n"] for r in results]
    modes = data["modes"]
    fig, (ax_m, ax_o) = plt.subplots(1, 2, figsize=(13, 5.5), dpi=110)
    for step, label, colour in STORE_MESSAGE_STEPS:
        for mode, style in zip(modes, ("-", "--"), strict=False):
            ax_m.plot(sizes, [r["steps"][step]["total"][mode]["min"] * 1000 for r in results],
                      marker="o", color=colour, linestyle=style,
                      label=label if mode == "plain" else None)
    if len(modes) > 1:
        ax_m.plot([], [], color="black", linestyle="--",
                  label="dashed: the same, database encrypted at rest (AES-256-GCM)")
    log_log_axes(ax_m, sizes, "members (n)", "milliseconds (log scale)")
    ax_m.set_title("per application message")
    ax_m.legend(fontsize=7)
    for get, label, colour, style in STORE_OTHER:
        ax_o.plot(sizes, [get(r, "plain")["min"] * 1000 for r in results], marker="s",
                  color=colour, linestyle=style, label=label)
    log_log_axes(ax_o, sizes, "members (n)", "milliseconds (log scale)")
    ax_o.set_title("per Commit, and loading at start-up (plain)")
    ax_o.legend(fontsize=7)
    env = data["environment"]
    fig.suptitle(f"mls-xmpp state persistence (SQLiteStore), cipher suite "
                 f"{data['cipher_suite']}, {env['cpus']} cores, minimum of the repeats")
    return fig


def fleet_runs(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of a fleet JSON: one ``bench_fleet.py --json`` file, or several of them
    gathered as ``{"benchmark": "fleet", "runs": [...]}``, fewest devices first."""
    runs = data.get("runs", [data])
    return sorted(runs, key=lambda r: r["results"]["devices"])


def plot_fleet(data: dict[str, Any], plt: Any) -> Any:
    """Left: fan-out latency (CDF) per fleet size; right: group creation and Commit."""
    runs = fleet_runs(data)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for run in runs:
        r = run["results"]
        xs, ys = cdf(r["latency_samples_ms"])
        ax1.plot(xs, ys, label=f"{r['devices']:,} devices (p50 {r['fanout_p50_ms']:.0f} ms, "
                               f"p99 {r['fanout_p99_ms']:.0f} ms)")
    ax1.set_xscale("log")
    ax1.set_xlabel("send -> decrypted at one device, ms (log scale)")
    ax1.set_ylabel("% of (device, message) samples")
    ax1.set_title("fan-out of one sender's messages")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    labels = [f"{run['results']['devices']:,}" for run in runs]
    width = 0.38
    pos = list(range(len(runs)))
    b1 = ax2.bar([p - width / 2 for p in pos],
                 [run["results"]["create_all_joined_s"] for run in runs], width,
                 label="create_group until all joined")
    b2 = ax2.bar([p + width / 2 for p in pos],
                 [run["results"]["commit_converge_s"] for run in runs], width,
                 label="a Commit applied by all")
    bar_labels(ax2, b1, "{:.1f} s")
    bar_labels(ax2, b2, "{:.2f} s")
    ax2.set_xticks(pos, labels)
    ax2.set_xlabel("devices (real XMPP connections, one group)")
    ax2.set_ylabel("seconds")
    ax2.set_yscale("log")
    ax2.set_title("group set-up and a Commit")
    ax2.legend(fontsize=8)
    return fig


FLOOR_OPS = [("add", "add n"), ("join", "join"), ("upd1", "first update")]


def plot_floor(data: dict[str, Any], plt: Any) -> Any:
    """Each operation as a multiple of its cryptographic floor, per size and mode.

    With a ``"before"`` mapping (the same keys and form as ``"results"``, from
    the code before a change), its ratios are drawn as black marks on the bars.
    """
    results = data["results"]
    before = data.get("before", {})
    keys = list(results)
    # with CPU times (bench_floor.py from issue 17 round 5 on): a second panel with the
    # CPU ratios on one core, which a loaded machine does not blur as it does wall time
    cpu_keys = [k for k in keys if results[k].get("mode") == "serial"
                and "add cpu ratio" in results[k]["median"]]
    panels = [(keys, "ratio", "time / floor (median of runs)")]
    if cpu_keys:
        panels.append((cpu_keys, "cpu ratio", "CPU time / floor, one core"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, len(keys) * 0.9),
                                                      4.8 * len(panels)), dpi=110, squeeze=False)
    width = 0.8 / len(FLOOR_OPS)
    for ax, (pkeys, field, ylabel) in zip(axes[:, 0], panels, strict=True):
        for k, (op, label) in enumerate(FLOOR_OPS):
            xs = [i + (k - 1) * width for i in range(len(pkeys))]
            ys = [results[key]["median"][f"{op} {field}"] for key in pkeys]
            ax.bar(xs, ys, width, label=label)
            old = [(x, before[key]["median"][f"{op} {field}"])
                   for x, key in zip(xs, pkeys, strict=True)
                   if f"{op} {field}" in before.get(key, {}).get("median", {})]
            if old:
                ax.scatter([x for x, _ in old], [y for _, y in old], marker="_", s=120,
                           color="k", zorder=3, label="before" if k == 0 else None)
        ax.axhline(data.get("target_ratio", 1.3), color="k", ls="--", lw=1, label="target")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks(range(len(pkeys)),
                      [key.replace("/tree-", "\ntree ").replace("/", " ", 1) for key in pkeys],
                      fontsize=7)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0, 0].set_title("core operations against the public-key work they cannot avoid")
    return fig


PLOTTERS: dict[str, Callable[[dict[str, Any], Any], Any]] = {
    "group": plot_group,
    "tree": plot_tree,
    "xmpp": plot_xmpp,
    "store": plot_store,
    "fleet": plot_fleet,
    "floor": plot_floor,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="JSON written by a benchmark's --json")
    p.add_argument("out", type=Path, help="image to write (PNG, SVG, ...)")
    args = p.parse_args(argv)
    data = json.loads(args.results.read_text(encoding="utf-8"))
    try:
        kind = detect(data)
    except ValueError as e:
        p.error(f"{args.results}: {e}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = PLOTTERS[kind](data, plt)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out} ({kind} benchmark)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
