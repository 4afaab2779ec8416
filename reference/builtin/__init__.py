"""The built-in side: nn.Transformer's configuration with random weights, and the weight bridge between the
built-in's parameter names and handmade's."""
