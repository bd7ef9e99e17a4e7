"""twistd plugin shim: `twistd securetransport`. No code here; see securetransport.tap."""

from twisted.application.service import ServiceMaker

securetransport = ServiceMaker(
    "securetransport",
    "securetransport.tap",
    "Secure file transfer server (FTP and FTPS with SSL access by user class)",
    "securetransport",
)
