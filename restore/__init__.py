"""The restore kit's directory, packaged as ``xsbackup._kit`` (see ``xsbackup/resources.py``).

``xsrestore.py`` is a standalone script for a bare device; nothing here is imported by it.
"""
