import pytest
import torch

from genbench import GenbenchError
from genbench.nets.conv_vae import ConvDecoder, ConvEncoder
from genbench.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from genbench.nets.unet import UNet, timestep_embedding


@pytest.mark.parametrize("size,channels", [(32, 1), (64, 3), (16, 1)])
def test_dcgan_shapes(size: int, channels: int) -> None:
    g = DCGANGenerator(z_dim=8, channels=channels, image_size=size, width=8)
    d = DCGANDiscriminator(channels=channels, image_size=size, width=8)
    x = g(torch.randn(3, 8))
    assert x.shape == (3, channels, size, size)
    assert x.abs().max() <= 1  # tanh output
    assert d(x).shape == (3,)


@pytest.mark.parametrize("size,channels", [(32, 1), (64, 3)])
def test_vae_nets_shapes(size: int, channels: int) -> None:
    enc, dec = ConvEncoder(channels, size, 6, 8), ConvDecoder(channels, size, 6, 8)
    mu, logvar = enc(torch.randn(2, channels, size, size))
    assert mu.shape == logvar.shape == (2, 6)
    assert dec(mu).shape == (2, channels, size, size)


def test_unet_shape_and_time_dependence() -> None:
    net = UNet(channels=3, image_size=16, base_channels=8, channel_mults=(1, 2), attn_resolutions=(8,))
    x = torch.randn(2, 3, 16, 16)
    out_a = net(x, torch.tensor([1, 1]))
    out_b = net(x, torch.tensor([500, 500]))
    assert out_a.shape == x.shape
    assert not torch.allclose(out_a, out_b)  # the timestep embedding reaches the output


def test_timestep_embedding_is_sinusoidal() -> None:
    emb = timestep_embedding(torch.tensor([0, 3]), 8)
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert torch.isclose(emb[1, 0], torch.sin(torch.tensor(3.0)))


@pytest.mark.parametrize(
    "factory",
    [
        lambda: DCGANGenerator(image_size=28),
        lambda: DCGANDiscriminator(image_size=48),
        lambda: ConvEncoder(image_size=4),
        lambda: UNet(image_size=30, channel_mults=(1, 2, 2)),
        lambda: DCGANGenerator(channels=2),
    ],
)
def test_impossible_shapes_are_rejected_clearly(factory) -> None:
    with pytest.raises(GenbenchError, match=r"image_size|channels"):
        factory()
