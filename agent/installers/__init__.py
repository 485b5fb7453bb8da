"""Installers: one per component kind, behind the :class:`Installer` protocol."""
