"""Physics-based lung-ultrasound simulator with exact dense ground truth.

``scene`` draws a clip's anatomy from diagnosis-conditioned priors, ``render`` turns it into B-mode
frames and anatomy masks on the probe's beam grid, ``geometry`` scan-converts, ``writer`` writes a
manifest dataset.
"""

from pleura.simulate.geometry import ProbeGeometry
from pleura.simulate.render import ClipRenderer, Frame
from pleura.simulate.scene import PRIORS, Scene, sample_scene
from pleura.simulate.writer import SimulationConfig, SimulationError, simulate_clip, write_dataset

__all__ = [
    "PRIORS",
    "ClipRenderer",
    "Frame",
    "ProbeGeometry",
    "Scene",
    "SimulationConfig",
    "SimulationError",
    "sample_scene",
    "simulate_clip",
    "write_dataset",
]
