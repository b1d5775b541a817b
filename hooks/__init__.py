"""The example hooks' directory, packaged as ``xsbackup._hooks`` (see ``xsbackup/resources.py``).

The hooks are standalone scripts; copy one into ``<hooks dir>/<stage>/`` to install it.
"""
