"""The CLI's sampling defaults are the sampler's own (the CLI avoids importing torch-heavy modules at start)."""
import inspect

from dream3d import prior_commands
from dream3d.priors.embedded_model import SAMPLE_GUIDANCE_SCALE, SAMPLE_VIEW_GUIDANCE_SCALE


def test_cli_sampling_guidance_matches_sampler_default():
    for fn in (prior_commands.prior_sample, prior_commands.prior_eval):
        params = inspect.signature(fn).parameters
        assert params["guidance_scale"].default.default == SAMPLE_GUIDANCE_SCALE
        assert params["view_guidance_scale"].default.default == SAMPLE_VIEW_GUIDANCE_SCALE
