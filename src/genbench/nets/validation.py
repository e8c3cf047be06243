"""Shape checks shared by the networks, so an impossible config fails before training starts."""

from genbench import GenbenchError


def check_power_of_two_size(net: str, image_size: int, min_size: int) -> int:
    """Return log2(image_size); reject sizes the strided up/down-sampling stack cannot produce."""
    if image_size < min_size or image_size & (image_size - 1):
        raise GenbenchError(
            f"{net} needs an image size that is a power of two and at least {min_size}, got {image_size}. "
            f"Set data.image_size to e.g. 32 (Fashion-MNIST/MNIST are padded from 28 to 32)."
        )
    return image_size.bit_length() - 1


def check_divisible_size(net: str, image_size: int, num_downsamples: int) -> None:
    """Reject sizes that the network cannot halve ``num_downsamples`` times exactly."""
    factor = 2**num_downsamples
    if image_size % factor or image_size < factor:
        raise GenbenchError(
            f"{net} downsamples {num_downsamples} times, so data.image_size must be a multiple of {factor}; "
            f"got {image_size}. Change data.image_size or the network's channel_mults."
        )


def check_channels(net: str, channels: int) -> None:
    if channels not in (1, 3):
        raise GenbenchError(f"{net}: images must have 1 or 3 channels, got {channels}. Check data.channels.")
