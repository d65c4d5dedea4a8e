"""The reverse samplers a request may name, torch-free so that the API can check a request."""

# How the Langevin corrector's step size follows the stride of the reverse steps
# (model.diffusion.corrector_step, langevin_update); at steps == T rescaled and paper are one sampler.
SAMPLERS = {
    "rescaled": "predictor-corrector; the corrector step grows with the stride, so that each noise level "
    "gets the Langevin time it gets at T steps",
    "paper": "DiffCSP's predictor-corrector as published: the corrector step of T steps at any stride",
    "exponential": "predictor-corrector; the corrector spends the Langevin time of rescaled, moving as the "
    "Langevin dynamics of a Gaussian of width sigma_t do, exactly, so that no stride diverges",
}
DEFAULT_SAMPLER = "rescaled"
SAMPLER_CHOICES = " or ".join(SAMPLERS)
