"""The CLI's sampling CFG default is the sampler's own (the CLI avoids importing torch-heavy modules at start)."""
import inspect

from dream3d import cli
from dream3d.priors.embedded_model import SAMPLE_GUIDANCE_SCALE


def test_cli_sampling_guidance_matches_sampler_default():
    for fn in (cli.prior_sample, cli.prior_eval):
        default = inspect.signature(fn).parameters["guidance_scale"].default.default
        assert default == SAMPLE_GUIDANCE_SCALE
