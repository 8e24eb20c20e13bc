"""RC2-like target-domain simulator: four cases Sim{1,2} x Snr{1,2} from a head phantom.

    python -m daqsm.training_data.simulator.simulate --source builtin|RC2_PHANTOM_DIR -o OUT [--seed S]
        [--resolution MM] [--overwrite]

Recipe (docs/physics.md, after Marques et al., MRM 2021;86:526, the QSM Challenge 2.0):
chi = per-label susceptibility (Sim1 lower GM/WM contrast and no calcification, Sim2 RC2 chiref and
the calcification) + texture; field = D * chi of the brain tissue only (padded FFT) at the native
grid (0.64 mm for RC2); multi-echo GRE at 7 T, TE 4/12/20/28 ms; k-space cropped to the output
grid (1 mm: 164 x 205 x 205 for RC2); complex noise at peak SNR 100 (Snr1) / 1000 (Snr2); local
field estimated from the noisy phase (daqsm.training_data.simulator.gre). Ground truth chi is cropped in k-space
the same way and then freed of the Gibbs ringing the crop leaves (sub-voxel shifts along all three
axes, as RC2: daqsm.training_data.simulator.gibbs; the echoes keep theirs, it is part of the measured data); labels
are resampled by majority (every label of the input survives).

Each case folder: local_field.nii.gz (ppm), magnitude.nii.gz (4-D, echoes last), mask.nii.gz,
chi.nii.gz (ppm), segmentation.nii.gz (RC2 labels), case.json (b0_tesla, te_s, voxel_size_mm,
b0_dir, peak_snr, seed, source, variant).
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from daqsm.config import ArgumentParser, add_config_options, param, require, resolve_config, write_config
from daqsm.errors import InputError, output_path, run_cli
from daqsm.outputs import config_companion
from daqsm.training_data.dipole import forward_field
from daqsm.training_data.formats.case_folder import write_case as write_case_folder
from daqsm.training_data.simulator.gibbs import remove_gibbs_ringing
from daqsm.training_data.simulator.gre import add_noise, crop_kspace, echo_signals, estimate_local_field
from daqsm.training_data.simulator.texture import texture_ppm
from daqsm.training_data.simulator.tissue import BRAIN_LABELS, CALCIFICATION, CHIREF_PPM, tissue_maps
from daqsm.validate import in_range

PROG = "simulate"
B0_TESLA = 7.0
TE_S = (0.004, 0.012, 0.020, 0.028)
B0_DIR = (0.0, 0.0, 1.0)
PEAK_SNR = {"Snr1": 100.0, "Snr2": 1000.0}
VARIANTS = ("Sim1", "Sim2")
RC2_NATIVE_MM = 0.64


@dataclass
class Anatomy:
    """Labels and brain mask on the native (fine) grid."""

    labels: np.ndarray
    mask: np.ndarray
    voxel_size_mm: tuple
    affine: np.ndarray
    chiref_ppm: dict
    name: str


def load_rc2_phantom(folder) -> Anatomy:
    """RC2 segmentation (0.64 mm), brain mask and chiref values from SusceptibilityValues.mat."""
    from daqsm.training_data.volume_io import read_volume

    folder = Path(folder)
    for name in ("SegmentedModel.nii.gz", "BrainMask.nii.gz"):
        if not (folder / name).exists():
            raise InputError(f"--source {folder}: expected an RC2 phantom folder with {name}, not found")
    seg = read_volume(folder / "SegmentedModel.nii.gz", dtype=None)
    mask = read_volume(folder / "BrainMask.nii.gz", dtype=None).data > 0
    chiref = dict(CHIREF_PPM)
    mat = folder / "SusceptibilityValues.mat"
    if mat.exists():
        import scipy.io

        try:
            labels = scipy.io.loadmat(mat, squeeze_me=True, struct_as_record=False).get("label")
            if labels is not None:
                for index, entry in enumerate(np.atleast_1d(labels), start=1):
                    chiref[index] = float(getattr(entry, "chiref", chiref.get(index, 0.0)))
        except Exception as err:  # corrupt or foreign .mat: one line naming it, not a traceback
            raise InputError(f"{mat}: cannot read the chiref values ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})"[:300]) from None
    return Anatomy(seg.data.astype(np.uint8), mask, seg.voxel_size_mm, seg.affine, chiref, str(folder))


def load_builtin(native_mm: float) -> Anatomy:
    """The built-in phantom's anatomy at the native resolution."""
    from daqsm.training_data.simulator.phantom import phantom_anatomy

    labels, mask, affine = phantom_anatomy(native_mm, True)
    return Anatomy(np.array(labels), np.array(mask), (native_mm,) * 3, np.array(affine), dict(CHIREF_PPM), "builtin")


def output_grid(anatomy: Anatomy, resolution_mm: float):
    """Output shape (FOV kept), voxel size and affine for a target resolution."""
    shape = tuple(int(round(n * v / resolution_mm)) for n, v in zip(anatomy.labels.shape, anatomy.voxel_size_mm))
    vs = tuple(n * v / m for n, v, m in zip(anatomy.labels.shape, anatomy.voxel_size_mm, shape))
    affine = anatomy.affine.copy()
    affine[:3, :3] = anatomy.affine[:3, :3] * (np.array(vs) / np.array(anatomy.voxel_size_mm))[None, :]
    return shape, vs, affine


def linear_resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear interpolation between voxel-centre grids, zeros outside.

    Row o interpolates at input coordinate (o + 0.5) * n_in / n_out - 0.5, so applying it along
    every axis equals `scipy.ndimage.zoom(order=1, grid_mode=True, mode="grid-constant")`.
    """
    coords = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    lower = np.floor(coords).astype(int)
    upper_weight = coords - lower
    matrix = np.zeros((n_out, n_in))
    for index, weight in ((lower, 1.0 - upper_weight), (lower + 1, upper_weight)):
        inside = (index >= 0) & (index < n_in)
        matrix[np.nonzero(inside)[0], index[inside]] += weight[inside]
    return matrix


def label_fractions(labels, out_shape) -> dict:
    """{label: fraction of each output voxel covered by it} by separable linear resampling.

    The resampling is linear, so the fraction of a union of labels is the sum of their fractions
    (used to derive Sim1 from Sim2 without resampling again). Each label is resampled only inside
    its bounding box, which keeps the small structures (nuclei, veins, calcification) cheap.
    """
    matrices = [linear_resample_matrix(n, m) for n, m in zip(labels.shape, out_shape)]
    # labels shifted so that 0 has a box too; absent labels have none (no separate np.unique pass)
    boxes = ndi.find_objects(labels.astype(np.int32) + 1)
    fractions = {}
    for label, box in enumerate(boxes):
        if box is None:
            continue
        indicator = (labels[box] == label).astype(np.float32)
        rows = []
        for axis, (matrix, span) in enumerate(zip(matrices, box)):
            columns = matrix[:, span].astype(np.float32)
            used = np.nonzero(columns.any(axis=1))[0]
            rows.append(slice(used[0], used[-1] + 1))
            indicator = np.moveaxis(np.tensordot(columns[rows[-1]], indicator, axes=([1], [axis])), 0, axis)
        frac = np.zeros(out_shape, np.float32)
        frac[tuple(rows)] = indicator
        fractions[int(label)] = frac
    return fractions


def majority_labels(fractions: dict, out_shape) -> np.ndarray:
    """Label of the largest fraction per voxel (first label wins ties); no label of the input vanishes."""
    best = np.zeros(out_shape, np.float32)
    out = np.zeros(out_shape, np.uint8)
    for label, frac in fractions.items():
        better = frac > best
        out[better], best[better] = label, frac[better]
    for label, frac in fractions.items():
        if label and not np.any(out == label):
            out[np.unravel_index(np.argmax(frac), out_shape)] = label
    return out


def resample_labels(labels, out_shape):
    """Majority resampling (area-weighted label fractions); labels of the input never vanish."""
    return majority_labels(label_fractions(labels, out_shape), out_shape)


def calcification_replacement(labels):
    """The most common label in a 2-voxel shell around the calcification (None without one)."""
    calc = labels == CALCIFICATION
    if not calc.any():
        return None
    # work in the calcification's bounding box (plus the shell) instead of the whole head
    box = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in ndi.find_objects(calc.astype(np.uint8))[0])
    calc_box = calc[box]
    shell = ndi.binary_dilation(calc_box, iterations=2) & ~calc_box
    values, counts = np.unique(labels[box][shell], return_counts=True)
    return int(values[np.argmax(counts)])


def remove_calcification(labels, replacement: int | None = None):
    """Sim1: relabel the calcification to `replacement` (default: the most common label around it)."""
    if replacement is None:
        replacement = calcification_replacement(labels)
    if replacement is None:
        return labels
    out = labels.copy()
    out[labels == CALCIFICATION] = replacement
    return out


def merge_label_fractions(fractions: dict, label: int, into: int | None) -> dict:
    """Fractions after relabelling `label` as `into` (exact: resampling is linear)."""
    if into is None or label not in fractions:
        return fractions
    merged = {k: v for k, v in fractions.items() if k != label}
    merged[into] = merged.get(into, 0) + fractions[label]
    return dict(sorted(merged.items()))


def simulate_cases(anatomy: Anatomy, out_dir, resolution_mm: float = 1.0, seed: int = 0,
                   quiet: bool = False, peak_snr: dict | None = None, variants=VARIANTS,
                   gibbs_removal: bool = True, b0_tesla: float = B0_TESLA, te_s=TE_S,
                   b0_dir=B0_DIR) -> list[str]:
    """Write the case folders {variant}{snr name} (default Sim{1,2}Snr{1,2}) into out_dir.

    Args:
        anatomy: native-grid labels and mask (load_builtin / load_rc2_phantom).
        out_dir: parent folder of the cases.
        resolution_mm: output voxel size (k-space crop; equal to the native size: no resampling).
        seed: texture seed (shared by all cases: one head) and noise seed (per case).
        quiet: no progress bar.
        peak_snr: {name: peak SNR}, default {"Snr1": 100, "Snr2": 1000}; inf gives noise-free data.
        variants: subset of ("Sim1", "Sim2").
        gibbs_removal: remove the k-space crop's Gibbs ringing from the ground truth chi (as RC2);
            False keeps the ringing (the simulator before issue 16).
        b0_tesla: field strength (RC2: 7 T). R2* is RC2's 7 T value x b0_tesla / 7 (R2* grows about
            linearly with B0 in brain tissue); the field in ppm does not depend on B0.
        te_s: echo times in seconds (at least 2; RC2: 4, 12, 20, 28 ms).
        b0_dir: B0 direction in voxel axes (normalised here; RC2: the third axis).

    Returns:
        The case folder paths.
    """
    peak_snr = dict(PEAK_SNR if peak_snr is None else peak_snr)
    te_s = tuple(float(t) for t in te_s)
    b0_dir = tuple(float(v) for v in np.asarray(b0_dir, np.float64) / np.linalg.norm(b0_dir))
    from tqdm import tqdm

    out_shape, out_vs, out_affine = output_grid(anatomy, resolution_mm)
    texture = texture_ppm(anatomy.labels, anatomy.voxel_size_mm, seed)
    mask_out = resample_labels(anatomy.mask.astype(np.uint8), out_shape) > 0
    # labels resampled once: Sim1 only relabels the calcification, and resampling is linear
    fractions = label_fractions(anatomy.labels, out_shape)
    replacement = calcification_replacement(anatomy.labels)
    pending = []
    progress = tqdm(total=len(variants) * len(peak_snr), desc="RC2-like cases", disable=quiet, file=sys.stderr)
    cropped = out_shape != anatomy.labels.shape
    # gzip of the NIfTI files (zlib releases the GIL) overlaps the next case's computation; the
    # Gibbs removal of the truth (numpy/FFT, releases it too) overlaps the echoes of its variant
    with ThreadPoolExecutor(max_workers=1) as writer, ThreadPoolExecutor(max_workers=1) as truth_worker:
        for variant in variants:
            variant_index = VARIANTS.index(variant)
            labels = anatomy.labels if variant == "Sim2" else remove_calcification(anatomy.labels, replacement)
            brain = anatomy.mask & np.isin(labels, BRAIN_LABELS)
            chi, m0, r2star = tissue_maps(labels, brain, texture, variant, chiref_ppm=anatomy.chiref_ppm)
            chi_out = crop_kspace(chi, out_shape)
            # without a crop there is no ringing to remove
            derung = truth_worker.submit(remove_gibbs_ringing, chi_out, mask_out) if gibbs_removal and cropped else None
            field = forward_field(chi, anatomy.voxel_size_mm, b0_dir, pad="auto")
            del chi
            r2star = r2star * np.float32(b0_tesla / B0_TESLA)  # RC2's values are 7 T's
            echoes = [crop_kspace(s, out_shape) for s in echo_signals(m0, r2star, field, b0_tesla, te_s)]
            del field, m0, r2star
            chi_out = (chi_out if derung is None else derung.result()) * mask_out
            seg_out = majority_labels(fractions if variant == "Sim2" else
                                      merge_label_fractions(fractions, CALCIFICATION, replacement), out_shape)
            for snr_index, (snr_name, snr) in enumerate(peak_snr.items()):
                rng = np.random.default_rng([int(seed), variant_index, snr_index])
                sigma = float(np.abs(echoes[0]).max()) / snr
                noisy = [add_noise(e, sigma, rng) for e in echoes]
                local = estimate_local_field(noisy, te_s, b0_tesla, mask_out, out_vs)
                case = {"b0_tesla": float(b0_tesla), "te_s": list(te_s), "voxel_size_mm": list(out_vs),
                        "b0_dir": list(b0_dir),
                        "peak_snr": snr if np.isfinite(snr) else None, "noise_sigma": sigma, "seed": int(seed),
                        "source": anatomy.name, "variant": variant, "resolution_mm": resolution_mm}
                arrays = {"local_field": local, "magnitude": np.stack([np.abs(e) for e in noisy], -1),
                          "mask": mask_out.astype(np.uint8), "chi": chi_out.astype(np.float32), "segmentation": seg_out}
                if len(pending) >= 2:  # at most two cases in memory waiting for their files
                    pending[-2].result()
                future = writer.submit(write_case, Path(out_dir) / f"{variant}{snr_name}", arrays, case, out_affine)
                future.add_done_callback(lambda _: progress.update())
                pending.append(future)
    written = [future.result() for future in pending]
    progress.close()
    return written


#: name -> (description, units) of the volumes of a case folder, for their sidecars
CASE_VOLUMES = {
    "local_field": ("local field estimated from the noisy multi-echo phase (simulated)", "ppm"),
    "magnitude": ("multi-echo GRE magnitude, echoes last (simulated)", "arbitrary"),
    "mask": ("brain mask", None),
    "chi": ("ground-truth susceptibility (simulated)", "ppm"),
    "segmentation": ("RC2 tissue labels", None),
}


#: volumes made through the dipole kernel (forward_field, native grid, pad auto, D(0) = 0)
FIELD_VOLUMES = ("local_field", "magnitude")


def case_sidecar(name: str, case: dict) -> dict:
    """Provenance of one simulated volume (daqsm/provenance.py); the field used the one kernel."""
    from daqsm.provenance import build_record

    description, units = CASE_VOLUMES.get(name, (name, None))
    extra = {"EchoTime": case["te_s"]} if name == "magnitude" else {}
    return build_record(description, units, sources=[case["source"]], b0_tesla=case["b0_tesla"],
                        b0_dir=case["b0_dir"], voxel_size_mm=case["voxel_size_mm"], dipole_pad="auto",
                        d0=0.0 if name in FIELD_VOLUMES else None, config=case, **extra)


def write_case(folder, arrays: dict, case: dict, affine) -> str:
    """One simulated case folder (daqsm/training_data/formats/case_folder.py), each volume with its sidecar."""
    return write_case_folder(folder, arrays, case, affine, lambda name: case_sidecar(name, case))


@dataclass(frozen=True)
class SimulateConfig:
    """Simulator parameters (config-file keys = field names; options daqsm.config)."""

    source: str = param("", "'builtin' or an RC2 phantom folder (SegmentedModel.nii.gz, ...)")
    output: str = param("", "output folder (one sub-folder per case)", flags=("-o",))
    seed: int = param(0, "texture and noise seed")
    resolution: float = param(1.0, "output voxel size in mm (1 as RC2)")
    native: float | None = param(None, "builtin only: native voxel size in mm (default 0.64 x resolution, as RC2)")
    keep_gibbs_ringing: bool = param(False, "do not remove the k-space crop's Gibbs ringing from the ground truth chi")
    # b0_tesla, te_s and b0_dir get the project's one range and message for those quantities (validate.py)
    b0_tesla: float = param(B0_TESLA, "field strength in tesla (RC2: 7); R2* scales with it")
    te_s: tuple[float, ...] = param(TE_S, "echo times in seconds, at least 2 (RC2: 0.004 0.012 0.020 0.028)",
                                    type=float, nargs="+", aliases=("te",))
    b0_dir: tuple[float, float, float] = param(B0_DIR, "B0 direction in voxel axes (RC2: 0 0 1)", type=float, nargs=3)
    overwrite: bool = param(False, "replace existing case folders")
    progress: bool = param(True, "progress bar (--quiet: none)", negation="quiet")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=f"python -m daqsm.training_data.simulator.{PROG}", description=__doc__.split("\n\n")[0])
    add_config_options(parser, SimulateConfig, group_title=None, config_option=True)
    return parser


def main(argv=None) -> int:
    from daqsm.provenance import command

    args = build_parser().parse_args(argv)
    with command("daqsm-simulate", argv):
        return run_cli(lambda: _run(resolve_config(SimulateConfig, args.config, vars(args))), PROG)


def _run(args: SimulateConfig) -> int:
    require(args, ("source", "output"))  # e.g. --source builtin -o cases
    if not (0.3 <= args.resolution <= 8):
        raise InputError(f"--resolution: expected 0.3 to 8 mm, got {args.resolution:g}")
    if args.native is not None:
        in_range("--native", args.native, 0.1, args.resolution)
    if len(set(args.te_s)) < 2:
        raise InputError(f"--te-s: expected at least 2 different echo times in seconds, got {list(args.te_s)}")
    output_path("-o", args.output, kind="folder")
    existing = [Path(args.output) / f"{v}{s}" for v in VARIANTS for s in PEAK_SNR]
    from daqsm.outputs import refuse_existing

    refuse_existing("-o", existing, args.overwrite)
    if args.source.lower() == "builtin":
        anatomy = load_builtin(args.native or RC2_NATIVE_MM * args.resolution)
    else:
        anatomy = load_rc2_phantom(args.source)
    if any(args.resolution < v - 1e-6 for v in anatomy.voxel_size_mm):
        raise InputError(f"--resolution {args.resolution:g}: expected at least the native voxel size {anatomy.voxel_size_mm}")
    from daqsm.output_lock import claim_output, folder_removed_on_error

    with claim_output("-o", args.output, kind="folder"), folder_removed_on_error(args.output):
        cases = simulate_cases(anatomy, args.output, args.resolution, args.seed, not args.progress,
                               gibbs_removal=not args.keep_gibbs_ringing, b0_tesla=args.b0_tesla, te_s=args.te_s,
                               b0_dir=args.b0_dir)
        write_config(args, config_companion(args.output, "simulate", folder=True))
    print(f"{PROG}: wrote {len(cases)} cases to {args.output}", file=sys.stderr)
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
