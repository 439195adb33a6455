"""Cameras through lerobot's ``OpenCVCamera``, cropped and resized to the policy's 128x128 uint8.

``crop`` is ``(top, left, height, width)`` in pixels of the captured frame (``None``: the full frame);
the crop is resized with area interpolation to ``size x size``. Frames are RGB (lerobot's default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SIZE = 128


class CameraNotFoundError(ConnectionError):
    """The camera at an index/path could not be opened."""


def crop_resize(frame: np.ndarray, crop: tuple[int, int, int, int] | None, size: int = IMAGE_SIZE) -> np.ndarray:
    """Crop ``(top, left, height, width)`` then resize to ``(size, size, 3)`` uint8."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 frame, got shape {frame.shape}")
    if crop is not None:
        top, left, h, w = (int(v) for v in crop)
        if top < 0 or left < 0 or h <= 0 or w <= 0 or top + h > frame.shape[0] or left + w > frame.shape[1]:
            raise ValueError(f"crop {crop} (top, left, height, width) is outside the {frame.shape[1]}x"
                             f"{frame.shape[0]} frame")
        frame = frame[top:top + h, left:left + w]
    out = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out, dtype=np.uint8)


@dataclass
class CameraSpec:
    """One camera: observation name, OpenCV index or /dev/videoN (or a video file), capture settings."""

    name: str
    index_or_path: int | str
    width: int | None = 640
    height: int | None = 480
    fps: int | None = 30
    crop: tuple[int, int, int, int] | None = None
    warmup_s: int = 1  # lerobot reads frames this long at connect (auto-exposure settles)


class Camera:
    """A connected lerobot ``OpenCVCamera`` whose :meth:`read` gives 128x128x3 uint8 (RGB)."""

    def __init__(self, spec: CameraSpec, size: int = IMAGE_SIZE) -> None:
        from lerobot.cameras.opencv import OpenCVCamera, OpenCVCameraConfig

        self.spec = spec
        self.size = size
        target = spec.index_or_path
        if isinstance(target, str) and not target.isdigit():
            if not Path(target).exists():
                raise CameraNotFoundError(
                    f"camera {spec.name!r}: {target} does not exist. List cameras with `lerobot-find-cameras "
                    "opencv` (or `v4l2-ctl --list-devices`); check the USB cable and that no other program "
                    "holds the camera.")
            target = Path(target)
        elif isinstance(target, str):
            target = int(target)
        config = OpenCVCameraConfig(index_or_path=target, fps=spec.fps, width=spec.width, height=spec.height,
                                    warmup_s=spec.warmup_s)
        self.camera = OpenCVCamera(config)
        try:
            self.camera.connect()
        except ConnectionError as exc:
            raise CameraNotFoundError(
                f"camera {spec.name!r}: could not open OpenCV index/path {spec.index_or_path!r} ({exc}). "
                "List cameras with `lerobot-find-cameras opencv`; check the USB cable, that the index did not "
                "move after a replug (prefer /dev/v4l/by-id/... paths), and that no other program holds it."
            ) from exc

    def read(self) -> np.ndarray:
        """The newest frame, cropped and resized (waits at most 0.5 s for one)."""
        return crop_resize(self.camera.async_read(timeout_ms=500), self.spec.crop, self.size)

    def close(self) -> None:
        if self.camera.is_connected:
            self.camera.disconnect()
