"""Device profiles and fit: what a model needs in memory (``footprint``) and whether it
fits on a device, with a roofline estimate of its decode speed (``profiles``). Always
estimates, and labelled so; the local CPU is measured by the runtime targets instead.

A device plugin subclasses :class:`DeviceProfile` (importable from here, as before the
host was split into subpackages).

May import: the plugin API, :mod:`quantforge.plugins`, :mod:`quantforge.model`.
"""

from quantforge.devices.profiles import DeviceProfile, RuntimeCost

__all__ = ["DeviceProfile", "RuntimeCost"]
