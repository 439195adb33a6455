"""Serial-port discovery for the arms' USB bus adapters (``serial.tools.list_ports``).

lerobot's own tool is interactive (``lerobot-find-port`` asks you to unplug the cable); this lists
what is there, with the USB description, so an error can say which ports exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# USB-serial chips on the SO-100/SO-101 bus boards (Waveshare: CH340/CH343 from WCH; some use CP210x).
BUS_ADAPTER_VIDS = {0x1A86: "WCH (CH340/CH343)", 0x10C4: "Silicon Labs (CP210x)", 0x0403: "FTDI"}


@dataclass(frozen=True)
class SerialPort:
    """One serial port as pyserial reports it."""

    device: str
    description: str = ""
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None

    @property
    def likely_arm(self) -> bool:
        """A USB-serial chip of the kind the SO-10x bus boards carry."""
        return self.vid in BUS_ADAPTER_VIDS

    def describe(self) -> str:
        ids = f" [{self.vid:04x}:{self.pid:04x}]" if self.vid is not None and self.pid is not None else ""
        sn = f" serial {self.serial_number}" if self.serial_number else ""
        return f"{self.device} ({self.description or 'no description'}{ids}{sn})"


def list_serial_ports() -> list[SerialPort]:
    """Every serial port on this machine, likely arm adapters first."""
    from serial.tools import list_ports

    ports = [SerialPort(p.device, p.description or "", p.vid, p.pid, p.serial_number) for p in list_ports.comports()]
    return sorted(ports, key=lambda p: (not p.likely_arm, p.device))


def describe_ports() -> str:
    """One line for error messages: what ports exist, or that there are none."""
    ports = list_serial_ports()
    if not ports:
        return "no serial ports found at all"
    return "serial ports found: " + "; ".join(p.describe() for p in ports)


def port_exists(port: str) -> bool:
    """True when the path exists (Linux/macOS device node) or pyserial lists it (Windows COMx)."""
    return Path(port).exists() or any(p.device == port for p in list_serial_ports())
