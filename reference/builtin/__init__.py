"""The built-in side: nn.Transformer's configuration, the component registry (one record per level) and the
weight bridge between the built-in's parameter names and handmade's."""
