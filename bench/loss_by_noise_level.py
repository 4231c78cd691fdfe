"""Where a flower v-network's loss lies across the noise levels, plain and weighted by min-SNR-5.

    python bench/loss_by_noise_level.py   # after bench/flower_channels.py --run x30v_s0_minsnr5
                                          # (and x30v_s0_interval, the plain network)

Loads (``flower_sampler.train_flower_model``) the two v-networks of 04's flower recipe that
``bench/flower_sampler.py`` trained and saved for bench/RESULTS.md section 16 (row X's network,
30 epochs, training seed 0; the plain v-loss, and the v-loss weighted by min-SNR-5). For 256
training photos with their species, at every t of the cosine schedule (T = 150), it measures the
v-error ‖v − v̂‖² and reports which share of the loss falls on three bands of noise levels: the
cleanest (SNR_t = ᾱ_t/(1 − ᾱ_t) above 9), the middle (SNR_t from 1 to 9) and the noisiest (SNR_t
below 1). Each share is given twice: of the plain v-loss (each t weighted alike), and of the loss
min-SNR-5 trains on (each t's v-error times min(SNR_t, 5)/(SNR_t + 1), ``ddpm.min_snr_weight``,
as ``ddpm.VDenoiser.loss(min_snr_gamma=5)`` weights it). Writes bench/loss_by_noise_level.md and
.json.
"""
from __future__ import annotations

import torch

from course_lib import ddpm
from course_lib.conditioning import one_hot
from course_lib.data import load_flowers
from flower_recipe import SPECIES  # bench/flower_recipe.py
from flower_sampler import train_flower_model  # bench/flower_sampler.py
from report import write_report  # bench/report.py


def v_error_by_t(model, schedule, photos, c, seed: int = 0) -> torch.Tensor:
    """Mean ‖v − v̂‖² of ``photos`` at each t (``model`` is the bare v-network)."""
    g = torch.Generator().manual_seed(seed)
    errors = torch.zeros(schedule.T)
    ab = schedule.alpha_bars.cpu()
    with torch.no_grad():
        for t in range(schedule.T):
            noise = torch.randn(photos.shape, generator=g)
            a, s = ab[t].sqrt(), (1 - ab[t]).sqrt()
            x_t = (a * photos + s * noise).to(schedule.betas.device)
            v_hat = model(x_t, torch.full((len(photos),), t, device=x_t.device),
                          c=c.to(x_t.device)).float().cpu()
            errors[t] = (v_hat - (a * noise - s * photos)).square().mean()
    return errors


def main() -> int:
    flowers = load_flowers(size=32, classes=SPECIES, flip=False)
    pick = torch.randperm(len(flowers.images), generator=torch.Generator().manual_seed(0))[:256]
    photos, c = flowers.images[pick], one_hot(flowers.labels[pick], len(SPECIES))
    rows = []
    for shown, min_snr in (("plain v-loss", None), ("v-loss weighted by min-SNR-5", 5.0)):
        # loads the model that flower_channels.py's run saved (x30v_s0_interval or
        # x30v_s0_minsnr5), or trains it; it comes wrapped in ddpm.VDenoiser
        denoiser, _, schedule = train_flower_model(30, 64, (24, 48, 96), seed=0, prediction="v",
                                                   min_snr=min_snr)
        errors = v_error_by_t(denoiser.model, schedule, photos, c)
        ab = schedule.alpha_bars.cpu()
        snr = ab / (1 - ab)
        weighted = errors * ddpm.min_snr_weight(snr, 5.0, prediction="v")
        bands = {"clean": snr > 9, "middle": (snr >= 1) & (snr <= 9), "noisy": snr < 1}
        row = {"network": shown, "plain_loss": round(errors.mean().item(), 4),
               "weighted_loss": round(weighted.mean().item(), 4)}
        for band, mask in bands.items():
            row[f"{band}_steps"] = int(mask.sum())
            row[f"{band}_share_plain"] = round((errors[mask].sum() / errors.sum()).item(), 3)
            row[f"{band}_share_weighted"] = round((weighted[mask].sum() / weighted.sum()).item(), 3)
        middle = torch.nonzero(bands["middle"]).flatten()
        row["middle_t"] = [int(middle[0]), int(middle[-1])]
        rows.append(row)
    r = rows[0]
    lines = [f"Where 04's flower v-network's loss lies (row X's network, 30 epochs, seed 0; 256 "
             f"training photos at every t of the cosine schedule, T = 150): the share of the loss "
             f"on the {r['clean_steps']} cleanest steps (SNR_t > 9), the {r['middle_steps']} middle "
             f"ones (1 ≤ SNR_t ≤ 9, t = {r['middle_t'][0]} to {r['middle_t'][1]}) and the "
             f"{r['noisy_steps']} noisiest (SNR_t < 1), of the plain v-loss and of the loss "
             f"weighted by min-SNR-5, for the network trained each way.", "",
             "| network trained on | plain v-loss | clean | middle | noisy "
             "| weighted by min-SNR-5 | clean | middle | noisy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['plain_loss']:.4f} | {r['clean_share_plain']:.0%} "
                     f"| {r['middle_share_plain']:.0%} | {r['noisy_share_plain']:.0%} "
                     f"| {r['weighted_loss']:.4f} | {r['clean_share_weighted']:.0%} "
                     f"| {r['middle_share_weighted']:.0%} | {r['noisy_share_weighted']:.0%} |")
    write_report("loss_by_noise_level", lines, {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
