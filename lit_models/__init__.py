"""The methods: one folder each (mrfa/, xportrait/, xnemo/, interanimate/, imposter/), shared blocks in common/,
reference baselines in baselines/. Every method is an `AnimationModule` (lit_models.base) built from its config
(`lit_models.registry.build_model`) and rebuilt from any checkpoint (`lit_models.registry.load_model`)."""
