"""The shipped pretrained models: found by name, and they run through OpenMM out of the box."""
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest

import openmm_cgml
from openmm_cgml import pretrained
from openmm_cgml.openmm import CGMLIntegrator, coarse_grained_system

SHIPPED = {"alanine-dipeptide": "alanine-dipeptide", "polymer-chain": "polymer-chain",
           "polymer-chain-1ps": "polymer-chain"}  # model -> start system


def test_the_reference_systems_have_shipped_models():
    assert set(SHIPPED) <= set(pretrained.available())
    with pytest.raises(ValueError, match="no pretrained model named"):
        pretrained.path("no-such-model")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_pretrained_model_runs_in_a_simulation(name, tmp_path):
    model = openmm_cgml.load(name)  # by name, not by path
    assert model.metadata["format"] == "openmm-cgml-model"
    assert pretrained.info(name)["command"]
    cg = coarse_grained_system(model, SHIPPED[name])
    integrator = CGMLIntegrator(model, seed=3)
    simulation = app.Simulation(cg.topology, cg.system, integrator, openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(cg.positions)
    log = tmp_path / "log.csv"
    simulation.reporters.append(app.StateDataReporter(str(log), 10, step=True, time=True))
    simulation.step(50)
    state = simulation.context.getState(getPositions=True)
    positions = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
    assert np.all(np.isfinite(positions))
    model_dt_ps = model.model_timestep.value_in_unit(u.picosecond)
    assert state.getTime().value_in_unit(u.picosecond) == pytest.approx(50 * model_dt_ps)
    assert len(log.read_text().splitlines()) == 1 + 5


def test_a_replaced_model_keeps_its_torchscript_file_vouched_for():
    from openmm_cgml import model_formats

    previous = pretrained.info("polymer-chain")["previous"]
    assert previous["sha256"] != pretrained.info("polymer-chain")["sha256"]
    assert previous["torchscript_sha256"] in model_formats.trusted_sha256s()
