"""Every experiment in configs/ lives its whole life on the debug preset, on data generated in the real formats: it
fits, resumes exactly, tests, writes its posteriors and reloads from its checkpoint (`helpers.
fit_test_predict_resume_reload`). The experiments are found, not listed: a new experiment file is run without a test
edit."""

import math

import pytest
from conftest import EXPERIMENT_CONFIGS, experiment_parts, fixture_args
from helpers import config_args, fit_test_predict_resume_reload

# The SVI refinement's debug fits: K = 2 steps on batches of 10 (K = 20 on batches of 50 is about 40 s a step on 2
# CPU cores).
SHORT_SVI = ["--model.init_args.refinement.init_args.steps", "2"]


@pytest.mark.integration
@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS)
def test_an_experiment_fits_resumes_tests_predicts_and_reloads(tmp_path, fixture_data_dir, config):
    refined = experiment_parts(config)["refinement"] is not None
    extra = [*fixture_args(fixture_data_dir), "--data.init_args.batch_size", "10", *(SHORT_SVI if refined else [])]
    metrics = fit_test_predict_resume_reload(tmp_path, config_args(config), *extra)
    if refined:
        assert math.isfinite(metrics["test/elbo_svi"])
