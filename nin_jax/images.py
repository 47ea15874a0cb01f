"""Image files given to the tools (predict, class_maps), read as the training images' shape.

Any size and colour mode PIL reads works: the first frame of an animation, CMYK
converted by PIL, 16-bit grayscale scaled to 8 bits, alpha dropped. Images of more
than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels are refused before they are decoded (a
small file can hold a huge image: a decompression bomb).
"""

import io
import re
import warnings

import numpy as np

from nin_jax import storage
from nin_jax.errors import ImageError


def _convert(image, channels: int):
    """``image`` as 8-bit grayscale (``channels`` 1) or RGB (3). 16-bit grayscale is scaled
    (PIL's own conversion clips it at 255); other modes go through RGB, which PIL reaches
    from every mode it reads (grayscale not: LAB)."""
    from PIL import Image

    if image.mode.startswith("I;16"):
        image = Image.fromarray(np.round(np.asarray(image) / 257.0).astype(np.uint8), "L")
    target = "L" if channels == 1 else "RGB"
    if image.mode != target:
        image = image.convert("RGB").convert(target)
    return image


def _too_large(path: str, error: Exception) -> ImageError:
    from PIL import Image

    count = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(count[1]):,} pixels" if count else "too many pixels"
    return ImageError(
        f"{path} has {size}, more than PIL.Image.MAX_IMAGE_PIXELS = "
        f"{Image.MAX_IMAGE_PIXELS:,} (a guard against decompression bombs); resize it first"
    )


def read_image(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """An image file of any size and colour mode as uint8 ``shape`` (H, W, C): converted to
    the training images' channels (grayscale or RGB) and resized (bilinear) to their size."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = shape
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(f"cannot read {path}: permission denied") from None
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        with warnings.catch_warnings():  # PIL only warns up to twice the pixel limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            buffer = io.BytesIO(data)
            with Image.open(buffer) as image:  # The bytes read above, from any storage.
                image = _convert(image, channels)
                image = image.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_large(path, e) from None
    except UnidentifiedImageError as e:
        known = str(e).replace(repr(buffer), repr(path))  # PIL names the buffer it read.
        raise ImageError(f"{path} is not an image file PIL can read ({known})") from None
    except OSError as e:  # PIL's decoders: truncated or corrupt data.
        raise ImageError(f"{path} is damaged ({e}); copy or export it again") from None
    except ValueError as e:  # A colour mode PIL cannot convert to RGB.
        raise ImageError(f"{path} cannot be converted ({e}); save it as RGB") from None
    return pixels.reshape(height, width, channels)
