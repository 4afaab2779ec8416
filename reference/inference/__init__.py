"""Inference: a target becomes the engine's candidate for a case; code nobody adapted is resolved here.

- ``prepare``    any target -> the engine's candidate for a case: an adapter or drop-in as it is, anything
                 else through an ``InferredTarget``;
- ``target``     an inferred target at any level: discovery of the configuration it implements, then one
                 candidate per drawn case (``candidate``); ``resolver`` resolves each case, with what was
                 inferred kept per configuration shape (``cache``), the options user code may fix
                 (``options``) and the sizes it really has (``sizes``);
- ``construct``  build the user's class through its own signature: ``roles`` (what a parameter stands for),
                 ``configs`` (an instance of the user's own config class, or a namespace), ``source`` (what its
                 source reads from a config), ``stacks`` (stacks that take a layer), ``parts`` and ``uses``
                 (sub-modules passed in, built from the user's own classes; how the source uses a parameter),
                 ``declined`` (an option value the constructor rejects);
- ``calling``    how to call it: ``binding`` (inputs to ``forward``'s parameters), ``convention`` (the call),
                 ``mask_probe`` and ``streams`` (each mask parameter's form and meaning, by measurement),
                 ``byname`` (what a mask paired by name takes), ``masks`` (writing the level's masks in that
                 form), ``outputs`` (reading the result), ``required`` and ``defaults`` (a required mask's
                 neutral value; causality when given no mask);
- ``weightmap``  which built-in tensor each parameter holds, verified by running: ``record`` traces a forward
                 pass, ``slots`` lists what can be filled, ``layouts`` the packed q/k/v row orders, ``maps``
                 holds and moves the map;
- ``auto``       all of it for one level, the layout decided by the values; ``copying`` copies a model whose
                 closures follow the copy.
"""
