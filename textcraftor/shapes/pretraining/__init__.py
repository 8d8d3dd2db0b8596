"""The ShapesWorld pretraining's parts, one module a stage: ``config`` (the run's settings),
``loop`` (what every stage trains with), ``clip_stage``, ``aesthetic_stage``, ``vae_stage``,
``unet_stage``, ``oracle_checks`` (the card's measurements), ``weights_layout`` and ``card``
(what the run writes). ``textcraftor.shapes.pretrain`` runs them in order."""
