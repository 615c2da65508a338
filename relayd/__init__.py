"""relayd: an RTP media proxy driven over rtpengine's ng protocol."""

__all__ = ["__version__"]

__version__ = "0.1.0"
