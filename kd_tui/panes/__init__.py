"""The dashboard's tabs: one Container subclass per tab, constructed with no arguments.

Models, Domains, Config, Train, Viewer, Runs — each reads and writes `self.app.state` and
posts `kd_tui.messages.StateChanged` after changing it.
"""
