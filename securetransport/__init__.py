"""securetransport: a secure file transfer server (FTP/FTPS) on Twisted."""

__version__ = "0.1.0"
