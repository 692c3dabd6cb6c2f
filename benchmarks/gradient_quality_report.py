"""``gradient_quality.py report``: the tables (printed and in RESULTS.md, section "Gradient quality
(mechanism bench)", kept at the end of the file between its markers) and one plot per trainable
set, from ``benchmarks/results/gradient_quality/<trainable>.json``."""

from __future__ import annotations

import json
from pathlib import Path

HEADING = "## Gradient quality (mechanism bench)"
BEGIN, END = "<!-- gradient-quality:begin -->", "<!-- gradient-quality:end -->"
ORDER = ("norm", "lora", "bitfit")
FISHER_INTRO = (
    "The same rows with the step's noise charged at each tensor's own curvature instead of the average "
    "(E[ĝᵀHĝ] ≈ (1/P)‖s⊙h‖² tr(DHD), the Hessian taken as the gradient covariance, i.e. the empirical Fisher / "
    "Gauss-Newton part, per tensor from the same batches: `gradient_quality_stats.fisher_curvature`). MeZO's analysis "
    "puts the slowdown on the Hessian's effective rank, not on d: where the gradient's energy sits where the curvature "
    "is, concentrating the probes there buys nothing. The oracle-best rows exploit tensors whose estimated curvature "
    "is near 0, the proxy's weakest point.")
SCALED_INTRO = (
    "Whole-model probes z = s ⊙ r with a fixed scale s_t per trainable tensor (formulas: "
    "`gradient_quality_stats.py`, section 'probes with a per-tensor scale'): `iso` s = 1 (DeComFL); `b-only` s = 0 on "
    "LoRA's A, 1 on B (`bforward`); `history K` s_t² from the running mean of K isotropic forward-difference steps "
    "(P = 16) of ĝ, what a device can rebuild from the seed log, in expectation and with G held fixed (both favour it); "
    "`oracle-rms` s_t ∝ the RMS of G_t and `oracle-best` the descent-maximising per-tensor scale, neither replayable "
    "(in-sample, or fitted on the odd batches and measured on the even ones). Columns: descent per forward FLOP over "
    "each reference's on the same batches, ± one jackknife SE (the scale held fixed). A scaled probe is biased "
    "(E ĝ = s² ⊙ G; last columns: its cosine to G, and its best step size E[G·ĝ]/E‖ĝ‖² over the default's, for "
    "the lr grid), and its descent ratio E[G·ĝ]²/(E‖ĝ‖²‖G‖²) assumes the curvature "
    "along its noise is the average one: where the scale concentrates on high-curvature tensors, or at B = 0 where the "
    "loss is flat in A, the real gain differs; the race decides.")


def pm(value: float, se: float, digits: int = 2) -> str:
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def sci(value: float, se: float) -> str:
    return f"{value:.3g} ± {se:.2g}"


def shown_rows(settings: list[dict]) -> list[dict]:
    """The rows a table shows: joint P1 = 1 over P2 and split, the P1 = P2 diagonal, clean at the
    default's counts, the single-block rows, backprop, and the best three by descent per FLOP."""
    def keep(s):
        if s["estimator"] == "spzo-joint":
            return s["p1"] == 1 or (s["p1"] == s["p2"] and s["split"] == 20)
        if s["estimator"] == "spzo-clean":
            return s["p2"] == 4 and s["p1"] == 1
        return s["p1"] in (1, 4, 16) or s["estimator"] == "backprop"
    rows = [s for s in settings if keep(s)]
    zo = [s for s in settings if s["estimator"] != "backprop"]
    best = sorted(zo, key=lambda s: -s["per_flop_vs_default"])[:3]
    for family in ("spzo-joint", "spzo-clean"):  # and each SPZO variant's best
        best.append(max((s for s in zo if s["estimator"] == family), key=lambda s: s["per_flop_vs_default"]))
    extra = [s for s in dict.fromkeys(s["setting"] for s in best)]
    return rows + [next(s for s in best if s["setting"] == label) for label in extra if all(r["setting"] != label for r in rows)]


def table(result: dict) -> list[str]:
    cks = list(result["checkpoints"])
    head = "| setting | GFLOP/step | " + " | ".join(
        f"{c}: cosine | {c}: descent/FLOP vs default | {c}: best step vs default" for c in cks) + " |"
    lines = [head, "|" + " --- |" * (2 + 3 * len(cks))]
    by_label = {c: {s["setting"]: s for s in result["checkpoints"][c]["settings"]} for c in cks}
    for s in shown_rows(result["checkpoints"][cks[0]]["settings"]):
        cells = [s["setting"] + (" **(default)**" if s["setting"] == result["default"] else ""), f"{s['gflops_per_step']:.0f}"]
        for c in cks:
            f = by_label[c][s["setting"]]
            cells += [sci(f["cosine"], f["cosine_se"]), pm(f["per_flop_vs_default"], f["per_flop_vs_default_se"], 3),
                      pm(f["step_size_vs_default"], f["step_size_vs_default_se"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def checkpoint_notes(result: dict) -> list[str]:
    out = []
    for c, ck in result["checkpoints"].items():
        default = next(s for s in ck["settings"] if s["setting"] == result["default"])
        best = max((s for s in ck["settings"] if s["estimator"] != "backprop"), key=lambda s: s["per_flop_vs_default"])
        rel = default["descent_ratio_se"] / default["descent_ratio"]
        needed = int(round(ck["batches"] * (rel / 0.1) ** 2))  # the SE falls as 1/sqrt(batches)
        lin = ", ".join(f"{r['method']}{'-' + r['variant'] if r['variant'] else ''} {r['difference']}: {100 * r['relative_difference']:.2g}%"
                        for r in ck["linearisation"])
        shares = "; ".join(f"split {s}: {100 * v['share']:.0f} ± {100 * v['share_se']:.0f}%" for s, v in ck["block2_share"].items())
        rows = {s["setting"]: s for s in ck["settings"]}
        split = default["split"]
        one = rows[f"spzo-joint P1=1 P2=1 split={split}"]["per_flop_vs_default"]
        gains = ", ".join(f"P2={p}: {rows[f'spzo-joint P1=1 P2={p} split={split}']['per_flop_vs_default'] / one:.2f}×"
                          for p in (2, 4, 8, 16) if f"spzo-joint P1=1 P2={p} split={split}" in rows)
        out += [
            f"- **{c}** ({ck['checkpoint'].get('steps', 0)} SGD steps{' at lr %g' % ck['checkpoint']['lr'] if 'lr' in ck['checkpoint'] else ''}; mean batch loss {ck['mean_batch_loss']:.3f}; "
            f"{ck['batches']} batches of {result['batch']}): ‖G‖² = {sci(ck['gradient_norm2'], ck['gradient_norm2_se'])}; "
            f"default's descent ratio {sci(default['descent_ratio'], default['descent_ratio_se'])} "
            f"(relative SE {100 * rel:.0f}%: about {needed:,} batches would bring it under 10%), "
            f"{sci(default['descent_per_gflop'], default['descent_per_gflop_se'])} per GFLOP; best: {best['setting']} at "
            f"{pm(best['per_flop_vs_default'], best['per_flop_vs_default_se'])}× the default's descent per FLOP.",
            f"  Block-2 probes against none (joint, P1 = 1, split {split}, descent per FLOP over P2 = 1's): {gains}."
            f" Block 2's share of ‖G‖²: {shares}. A 512-example gradient as the reference would scale every ratio by "
            f"cos²(g_512, G) = {ck['cos2_of_512_example_gradient']:.2f}. Trainable elements with a zero gradient on every "
            f"batch: {100 * ck.get('zero_gradient_fraction', 0):.0f}%. Forward-difference curvature term "
            f"E[q²] = {sci(ck['curvature_q2'], ck['curvature_q2_se'])}. Real scalars vs linearised (relative "
            f"difference): {lin}.",
        ]
    return out


def scaled_table(result: dict, key: str = "settings") -> list[str]:
    """The per-tensor probe scales' rows (``gradient_quality.py scaled``): descent per FLOP over
    the default's and over DeComFL P = 5's, central and forward, at each checkpoint (``key``:
    the isotropic-curvature figures, or ``settings_fisher_curvature``)."""
    cks = [c for c in result["checkpoints"] if key in result["checkpoints"][c]]
    if not cks:
        return []
    refs = (("default", "default"), ("decomfl_p5", "DeComFL P=5"), ("decomfl_fwd_p5", "DeComFL-fwd P=5"))
    head = "| probes (z = s ⊙ r) | GFLOP/step | " + " | ".join(
        f"{c}: vs {label}" for c in cks for _, label in refs) + " | " + " | ".join(
        f"{c}: cos(G, s²⊙G) | {c}: best step vs default" for c in cks) + " |"
    lines = [head, "|" + " --- |" * (2 + 5 * len(cks))]
    by_label = {c: {s["setting"]: s for s in result["checkpoints"][c][key]} for c in cks}
    for label, first in by_label[cks[0]].items():
        cells = [label, f"{first['gflops_per_step']:.0f}"]
        for c in cks:
            f = by_label[c][label]
            cells += [pm(f[f"per_flop_vs_{key}"], f[f"per_flop_vs_{key}_se"]) for key, _ in refs]
        cells += [cell for c in cks for cell in (f"{by_label[c][label]['bias_cosine']:.3f}",
                                                 pm(by_label[c][label]["step_size_vs_default"], by_label[c][label]["step_size_vs_default_se"], 1))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def scaled_notes(result: dict) -> list[str]:
    out = []
    for c, ck in result["checkpoints"].items():
        top = ", ".join(f"{t['tensor']} {100 * t['share']:.0f}%" for t in ck["top_tensors"][:3])
        conc = ck["tensors_for_80pct"]
        a = ck.get("lora_A_share")
        a_text = (f" LoRA A holds {100 * a['share']:.1f} ± {100 * a['share_se']:.1f}% of ‖G‖² with "
                  f"{100 * ck['lora_A_elements_share']:.0f}% of the elements; by factor (share of ‖G‖², of the elements): "
                  + ", ".join(f"{f['factor']} {100 * f['share']:.1f} ± {100 * f['share_se']:.1f}% ({100 * f['elements_share']:.0f}%)"
                              for f in ck["lora_factor_shares"]) + "." if a else "")
        out.append(f"- **{c}** ({ck['batches']} batches): {conc['tensors']} of {conc['of']} tensors "
                   f"({100 * conc['elements_share']:.0f}% of the elements) hold 80% of ‖G‖²; the largest: {top}.{a_text}")
    return out


def curvature_lines(path: Path, scaled: dict) -> list[str]:
    """The real-forward check of the curvature per probed element (``gradient_quality.py curvature``)
    beside the Fisher proxy's figure for the same ratio (v_proj's B over all B)."""
    if not path.exists():
        return []
    result = json.loads(path.read_text())
    rows = [f"{c}: {name} {sci(r['kappa'], r['kappa_se'])} ({pm(r['kappa_vs_b_only'], r['kappa_vs_b_only_se'])}× B-only's)"
            for c, ck in result["checkpoints"].items() for name, r in ck.items()]
    proxy = "; ".join(f"{c} {f['v_proj.lora_B'] / f['lora_B']:.2f}×" for c, ck in scaled["checkpoints"].items()
                      if "v_proj.lora_B" in (f := ck.get("fisher_curvature_by_factor", {})))
    return [f"Curvature per probed element κ_S = tr(H_SS)/|S| from real second differences ({result['probes']} Rademacher "
            f"directions per support, eps {result['eps']:g}, {result['batch']}; mean ± SE): " + "; ".join(rows) + ". "
            f"The Fisher proxy's v_proj-B-over-B ratio: {proxy or 'n/a'}. Command: `{result['command']}`.", ""]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cks = list(result["checkpoints"])
    fig, axes = plt.subplots(2, len(cks), figsize=(6 * len(cks), 8), squeeze=False)
    for ax, c in zip(axes[1], cks):
        units = result["checkpoints"][c]["units"]
        ax.bar(range(len(units)), [100 * u["share"] for u in units], yerr=[100 * u["share_se"] for u in units], capsize=1)
        ax.set_xticks(range(len(units)), [u["unit"].replace("layers.", "") for u in units], fontsize=6, rotation=90)
        ax.set_ylabel("% of ‖G‖² (U-statistic ± SE)")
        ax.set_title(f"{result['trainable']}, {c}: each unit's share of the gradient")
    for ax, c in zip(axes[0], cks):
        settings = result["checkpoints"][c]["settings"]
        for est, style in (("spzo-joint", "-o"), ("spzo-clean", ":s")):
            for split in sorted({s["split"] for s in settings if s["estimator"] == est}):
                rows = sorted((s for s in settings if s["estimator"] == est and s["p1"] == 1 and s["split"] == split), key=lambda s: s["p2"])
                ax.errorbar([s["p2"] for s in rows], [s["per_flop_vs_default"] for s in rows],
                            yerr=[s["per_flop_vs_default_se"] for s in rows], fmt=style, capsize=2, label=f"{est} P1=1 split {split}")
        for est, style in (("central", "--^"), ("forward", "--v")):
            rows = sorted((s for s in settings if s["estimator"] == est), key=lambda s: s["p1"])
            ax.errorbar([s["p1"] for s in rows], [s["per_flop_vs_default"] for s in rows],
                        yerr=[s["per_flop_vs_default_se"] for s in rows], fmt=style, capsize=2, label=f"{est} (x = P)")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("P2 (SPZO) or P (single block)")
        ax.set_ylabel("descent per forward FLOP / default's")
        ax.set_title(f"{result['trainable']}, {c} checkpoint")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(results: dict[str, dict], folder: Path) -> list[str]:
    first = next(iter(results.values()))
    lines = [HEADING, "", BEGIN, "",
             f"Expected one-step descent per forward FLOP of each estimator setting, from backpropagated batch gradients "
             f"of {first['model']} on {first['task'].upper()} (the default job's template, batch {first['batch']}, max length "
             f"{first['max_length']}, eps {first['eps']:g}, {first['distribution']} probes). Descent ratio "
             f"r = E[G·ĝ]²/(E‖ĝ‖²‖G‖²) with G the population gradient (‖G‖² by the U-statistic over batch pairs); "
             "descent per FLOP = r / the step's forward FLOPs (edgezo's forward-count model); "
             "'vs default' columns are paired ratios to the default setting on the same batches, ± one jackknife SE. "
             "Formulas and method: `benchmarks/gradient_quality_stats.py`.", ""]
    seen: dict[str, str] = {}
    for name, result in results.items():
        lines += [f"### {name} ({result['elements']:,} trainable elements, {result['tensors']} tensors)", ""]
        same = seen.setdefault(result["tensor_names_digest"], name)
        if same != name:
            lines += [f"`--trainable {name}` selects exactly the tensors `{same}` selects on {result['model']} (edgezo's "
                      f"bitfit is the bias and norm parameters, and this model has no biases), so its gradients, cache and "
                      f"figures are `{same}`'s.", "", f"Command: `{result['command']}`", ""]
            continue
        lines += table(result) + [""] + checkpoint_notes(result) + [""]
        lines += [f"![{name}](results/gradient_quality/{name}.png)", "", f"Command: `{result['command']}`", ""]
        scaled_path = folder / f"scaled_{name}.json"
        if scaled_path.exists():
            scaled = json.loads(scaled_path.read_text())
            lines += [f"#### {name}: where the probes go (per-tensor probe scales, issue 27)", "", SCALED_INTRO, ""]
            lines += scaled_table(scaled) + [""] + scaled_notes(scaled) + [""]
            fisher = scaled_table(scaled, "settings_fisher_curvature")
            if fisher:
                lines += [FISHER_INTRO, ""] + fisher + [""]
            lines += curvature_lines(folder / f"curvature_{name}.json", scaled) + [f"Command: `{scaled['command']}`", ""]
    lines += [END, ""]
    return lines


def write_section(results_md: Path, lines: list[str]) -> None:
    """Replace the section between its markers, or append it at the end of the file."""
    text = results_md.read_text(encoding="utf-8")
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        start = text.index(HEADING) if HEADING in text else text.index(BEGIN)
        stop = text.index(END) + len(END)
        text = text[:start] + block.rstrip("\n") + text[stop:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    results_md.write_text(text, encoding="utf-8")


def report(folder: Path, results_md: Path) -> None:
    results = {}
    for name in ORDER:
        path = folder / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    if not results:
        raise SystemExit(f"no results in {folder}: run `python benchmarks/gradient_quality.py run` first")
    digests: set[str] = set()
    for name, result in results.items():
        if result["tensor_names_digest"] in digests:
            continue  # bitfit on a model without biases is norm: the section says so, no second plot
        digests.add(result["tensor_names_digest"])
        plot(result, folder / f"{name}.png")
        print(f"\n{name}:\n" + "\n".join(table(result)))
    write_section(results_md, section(results, folder))
    print(f"\nwrote {results_md} (section '{HEADING}') and the plots in {folder}")
