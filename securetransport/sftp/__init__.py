"""SFTP (SSH File Transfer Protocol v3) on twisted.conch, over the same accounts,
classes, portal, filesystem, bans and logs as FTP (SPEC section 9).

- `server`: transport (algorithms, bans, limits, login timer), connection, factory.
- `auth`: userauth by class, the ISSHPrivateKey checker, the SFTP avatar.
- `subsystem`: the `sftp` subsystem over `IFilesystem`.
"""
