"""zedctl: the control plane of zedcup."""

__version__ = "0.1.0"
