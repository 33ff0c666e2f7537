"""engarde: send every WireGuard datagram over every usable uplink at once."""

from __future__ import annotations

__version__ = "0.1.0"
