"""Image files given to the tools (predict, class_maps), read as the training images' shape."""

import numpy as np

from nin_jax.errors import ImageError


def read_image(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """An image file of any size and colour mode as uint8 ``shape`` (H, W, C): converted to
    the training images' channels (grayscale or RGB) and resized (bilinear) to their size."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = shape
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, np.uint8)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"{path} is not an image file PIL can read ({e})") from None
    return pixels.reshape(height, width, channels)
