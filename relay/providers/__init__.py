"""The avatar providers, declared once each, above the providers they list in the layer order.

`entry` says what a declaration holds (`Provider`: name, settings, factory, operator calls, doctor check, simulator,
page transport); `heygen`, `liveavatar` and `simli` are the declarations; `table` lists them (`PROVIDERS`, the one
line a new provider adds) and derives everything else from that list: which provider the settings choose and whether
they are complete, demo mode's settings, the simulators to serve, the page's client configuration. `findings` is the
doctor's language, which a declaration's doctor check speaks. Import the module you need: this package loads none of
them.
"""
