"""Network sizes for smoke runs: a few-millisecond CPU step per family, for the test suite and the
GPU check's CPU mode (``scripts/gpu_check.py --tiny``). Hydra overrides on top of ``model=<family>``."""

TINY_OVERRIDES: dict[str, list[str]] = {
    "gan": ["model.generator.width=8", "model.discriminator.width=8", "model.generator.z_dim=16"],
    "vae": ["model.encoder.width=8", "model.decoder.width=8", "model.latent_dim=8"],
    "ddpm": [
        "model.net.base_channels=8",
        "model.net.channel_mults=[1,2]",
        "model.schedule.timesteps=100",
        "model.sampler.steps=5",
    ],
}
