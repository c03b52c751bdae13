"""Tests of openmm_cgml.data: coarse datasets written from real (tiny) OpenMM trajectories."""
from __future__ import annotations

import hashlib
from functools import lru_cache

import h5py
import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from openmm_cgml import cli, systems
from openmm_cgml.data import CoarseDataset, coarse_grain, make_loader
from openmm_cgml.mapping import Mapping
from openmm_cgml.trajectory import FineTrajectory

STRIDE = 20          # MD steps between saved frames
K, LAG = 3, 2        # history length, saved frames per model step


@lru_cache(maxsize=None)
def reference(name: str, **params):
    return systems.load(name, **params)


def run_md(path, name, n_frames, seed, wrap=False, **params):
    """Run real Langevin MD of a reference system and write it as a fine trajectory."""
    ref = reference(name, **params)
    integrator = ref.integrator(seed)
    context = openmm.Context(ref.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(ref.positions)
    context.setVelocitiesToTemperature(ref.temperature, seed)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 50)
    attrs = {"cgml_system": ref.name, "cgml_timestep_ps": ref.timestep.value_in_unit(unit.picosecond),
             "cgml_stride": STRIDE, "cgml_temperature_K": ref.temperature.value_in_unit(unit.kelvin),
             "cgml_seed": seed}
    trajectory = FineTrajectory.create(path, topology=ref.topology, masses=ref.masses, atom_types=ref.atom_types,
                                       charges=ref.charges, attrs=attrs, periodic=ref.is_periodic)
    frames = {"positions": [], "velocities": [], "time": [], "energy": [], "box": []}
    for _ in range(n_frames):
        integrator.step(STRIDE)
        state = context.getState(getPositions=True, getVelocities=True, getEnergy=True, enforcePeriodicBox=wrap)
        frames["positions"].append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        frames["velocities"].append(state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond))
        frames["time"].append(state.getTime().value_in_unit(unit.picosecond))
        frames["energy"].append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        frames["box"].append(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer))
    trajectory.append(np.array(frames["positions"]), np.array(frames["velocities"]), np.array(frames["time"]),
                      np.array(frames["energy"]), box_vectors=np.array(frames["box"]) if ref.is_periodic else None)
    trajectory.mark_complete()
    trajectory.close()
    return path


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    """Four short polymer chains: three sequences, one of them simulated twice."""
    folder = tmp_path_factory.mktemp("fine")
    specs = [(0, 1, 30), (0, 2, 24), (1, 3, 27), (2, 4, 21)]   # (sequence_seed, MD seed, frames)
    return [run_md(folder / f"chain{i}.h5", "polymer-chain", frames, seed, length=6, sequence_seed=sequence)
            for i, (sequence, seed, frames) in enumerate(specs)]


@pytest.fixture(scope="module")
def dataset(chains, tmp_path_factory):
    out = tmp_path_factory.mktemp("coarse") / "cg.h5"
    return coarse_grain(chains, out, atoms_per_bead=3, k=K, lag=LAG, split=(0.5, 0.25, 0.25), seed=0,
                        split_by="trajectory", chunk_frames=7)


def file_digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_layout_and_bead_positions_are_exact(dataset, chains):
    with h5py.File(dataset, "r") as handle:
        assert handle.attrs["k"] == K and handle.attrs["lag"] == LAG
        assert handle.attrs["md_steps_per_model_step"] == LAG * STRIDE
        assert handle.attrs["model_dt_ps"] == pytest.approx(LAG * STRIDE * 0.01)
        assert handle.attrs["mapping_method"] == "metis"
        assert len(handle["traj"]) == len(chains)
        for index, path in enumerate(chains):
            group = handle["traj"][f"{index:05d}"]
            mapping = Mapping.from_json(group.attrs["mapping"])
            with FineTrajectory(path) as fine:
                expected = mapping.bead_positions(fine.positions[:]).astype(np.float32)
                expected_velocities = mapping.bead_velocities(fine.velocities[:]).astype(np.float32)
                assert np.array_equal(group["atom_types"][()], fine.atom_types)
            assert np.array_equal(group["positions"][()], expected)           # chunking changes nothing
            assert np.array_equal(group["velocities"][()], expected_velocities)
            assert np.array_equal(group["bead_of_atom"][()], mapping.bead_of_atom)
            assert np.array_equal(group["coarse_bonds"][()], mapping.coarse_bonds)
            assert group.attrs["split"] in ("train", "val", "test")
        # chains 0 and 1 share a sequence, the others differ
        ids = [handle["traj"][f"{i:05d}"].attrs["sequence_id"] for i in range(4)]
        assert ids[0] == ids[1] and len(set(ids)) == 3


def test_windows_never_cross_trajectories_and_read_back_bit_identical(dataset, chains):
    total = 0
    with h5py.File(dataset, "r") as handle:
        for split in ("train", "val", "test"):
            data = CoarseDataset(dataset, split)
            names = [name for name in sorted(handle["traj"]) if handle["traj"][name].attrs["split"] == split]
            assert data.groups == names
            expected = sum(handle["traj"][name]["positions"].shape[0] - K * LAG for name in names)
            assert len(data) == expected and expected > 0
            total += len(data)
            for index in range(len(data)):
                item = data[index]
                traj, t = data.locate(index)
                positions = handle["traj"][names[traj]]["positions"][()]
                assert (K - 1) * LAG <= t <= positions.shape[0] - 1 - LAG    # the whole window is inside
                history = positions[t - (K - 1) * LAG:t + 1:LAG]
                assert torch.equal(item.pos_history, torch.from_numpy(history).transpose(0, 1))
                assert torch.equal(item.pos_target, torch.from_numpy(positions[t + LAG]))
                assert item.pos_history.shape == (positions.shape[1], K, 3)
                assert torch.equal(item.box, torch.zeros(1, 3, 3))
    n_frames = [FineTrajectory(path).n_frames for path in chains]
    assert total == sum(f - K * LAG for f in n_frames)


def test_splits_keep_trajectories_and_sequences_whole(chains, tmp_path):
    by_sequence = coarse_grain(chains, tmp_path / "seq.h5", atoms_per_bead=3, k=K, lag=LAG,
                               split=(0.34, 0.33, 0.33), split_by="sequence", seed=5)
    with h5py.File(by_sequence, "r") as handle:
        groups = [handle["traj"][name] for name in sorted(handle["traj"])]
        split_of_sequence = {}
        for group in groups:
            split_of_sequence.setdefault(group.attrs["sequence_id"], set()).add(group.attrs["split"])
        assert all(len(splits) == 1 for splits in split_of_sequence.values())
        assert {s for splits in split_of_sequence.values() for s in splits} == {"train", "val", "test"}
        assert handle.attrs["split_by"] == "sequence"


def test_normalisation_statistics_match_numpy(dataset):
    with h5py.File(dataset, "r") as handle:
        velocity, accel = [], []
        for name in handle["traj"]:
            group = handle["traj"][name]
            if group.attrs["split"] != "train":
                continue
            x = group["positions"][()].astype(np.float64)
            velocity.append((x[LAG:] - x[:-LAG]).ravel())
            accel.append((x[2 * LAG:] - 2 * x[LAG:-LAG] + x[:-2 * LAG]).ravel())
        assert handle.attrs["velocity_std_nm"] == pytest.approx(np.concatenate(velocity).std(), rel=1e-9)
        assert handle.attrs["accel_std_nm"] == pytest.approx(np.concatenate(accel).std(), rel=1e-9)
        assert 0 < handle.attrs["accel_std_nm"] < 1.0


def test_same_inputs_give_a_bit_identical_file(chains, dataset, tmp_path):
    again = coarse_grain(chains, tmp_path / "again.h5", atoms_per_bead=3, k=K, lag=LAG, split=(0.5, 0.25, 0.25),
                         seed=0, split_by="trajectory", chunk_frames=100)
    with h5py.File(dataset, "r") as first, h5py.File(again, "r") as second:
        assert dict(first.attrs) == dict(second.attrs)
        for name in first["traj"]:
            for key in first["traj"][name]:
                assert np.array_equal(first["traj"][name][key][()], second["traj"][name][key][()])
            assert dict(first["traj"][name].attrs) == dict(second["traj"][name].attrs)


def test_loader_batches_offset_indices(dataset):
    loader = make_loader(dataset, "train", batch_size=4, shuffle=True)
    batch = next(iter(loader))
    data = CoarseDataset(dataset, "train")
    n_beads, n_atoms = data[0].num_nodes, data[0].atom_types.shape[0]
    assert batch.num_graphs == 4
    assert batch.pos_history.shape == (4 * n_beads, K, 3) and batch.box.shape == (4, 3, 3)
    assert torch.equal(batch.batch, torch.arange(4).repeat_interleave(n_beads))
    assert torch.equal(batch.atom_batch, torch.arange(4).repeat_interleave(n_atoms))
    # indices point into the right window
    assert torch.equal(batch.batch[batch.bead_of_atom], batch.atom_batch)
    assert torch.equal(batch.batch[batch.coarse_edge_index[0]], batch.batch[batch.coarse_edge_index[1]])
    assert torch.equal(batch.atom_batch[batch.fine_edge_index[0]], batch.atom_batch[batch.fine_edge_index[1]])
    assert batch.fine_edge_index.max() == 4 * n_atoms - 1
    assert batch.coarse_edge_index.shape[1] == 4 * data[0].coarse_edge_index.shape[1]
    # workers open the file themselves
    parallel = make_loader(dataset, "train", batch_size=len(data), shuffle=False, num_workers=2)
    serial = make_loader(dataset, "train", batch_size=len(data), shuffle=False)
    assert torch.equal(next(iter(parallel)).pos_target, next(iter(serial)).pos_target)


def test_periodic_melt_is_made_whole(tmp_path):
    fine = run_md(tmp_path / "melt.h5", "polymer-melt", 8, seed=1, wrap=True, n_chains=6, length=8)
    with h5py.File(fine, "r+") as handle:   # wrap every atom on its own, as some tools write them
        lengths = handle["cell_lengths"][()][:, None, :]
        handle["coordinates"][...] = handle["coordinates"][()] - np.floor(handle["coordinates"][()] / lengths) * lengths
    with pytest.warns(UserWarning, match="so val/test get none"):
        out = coarse_grain(fine, tmp_path / "melt_cg.h5", atoms_per_bead=2, k=2, lag=1)
    with h5py.File(out, "r") as handle, FineTrajectory(fine) as trajectory:
        group = handle["traj/00000"]
        mapping = Mapping.from_json(group.attrs["mapping"])
        assert group["box"].shape == (8, 3, 3)
        np.testing.assert_allclose(group["box"][3], trajectory.box_vectors(3), atol=1e-5)
        beads = group["positions"][()]
        bonds = mapping.coarse_bonds
        lengths = np.linalg.norm(beads[:, bonds[:, 0]] - beads[:, bonds[:, 1]], axis=-1)
        assert lengths.max() < 1.2          # no coarse bond spans the box: chains are whole
        raw = mapping.bead_positions(trajectory.positions[:])   # wrapped atoms averaged naively
        raw_lengths = np.linalg.norm(raw[:, bonds[:, 0]] - raw[:, bonds[:, 1]], axis=-1)
        assert raw_lengths.max() > 1.2      # (the test is meaningful: wrapping did break chains)
    item = CoarseDataset(out, "train")[0]
    assert item.box.abs().sum() > 0


@pytest.mark.filterwarnings("ignore:only 2 trajectory")
def test_bad_input_is_refused_without_touching_existing_output(chains, dataset, tmp_path):
    before = file_digest(dataset)
    with pytest.raises(FileExistsError, match="already exists"):
        coarse_grain(chains, dataset)
    not_hdf5 = tmp_path / "junk.h5"
    not_hdf5.write_bytes(b"this is not an HDF5 file")
    with pytest.raises(ValueError, match="junk.h5"):
        coarse_grain([chains[0], not_hdf5], dataset, overwrite=True, lag=LAG, k=K)
    # NaN coordinates in the middle of a trajectory
    broken = tmp_path / "nan.h5"
    broken.write_bytes(open(chains[2], "rb").read())
    with h5py.File(broken, "r+") as handle:
        handle["coordinates"][11, 2, 0] = np.nan
    with pytest.raises(ValueError, match="frame 11 contain NaN"):
        coarse_grain([chains[0], broken], dataset, overwrite=True, lag=LAG, k=K, chunk_frames=5)
    with pytest.raises(ValueError, match="multiple of the trajectories' save stride"):
        coarse_grain(chains, tmp_path / "x.h5", model_steps=STRIDE + 1)
    with pytest.raises(ValueError, match="needs 301"):
        coarse_grain(chains, tmp_path / "x.h5", k=100, lag=3)
    with pytest.raises(ValueError, match="summing to 1"):
        coarse_grain(chains, tmp_path / "x.h5", split=(0.5, 0.1, 0.1))
    assert file_digest(dataset) == before
    assert not list(tmp_path.glob("x.h5*")) and not list(tmp_path.glob(".x.h5*"))   # no temporary files left
    assert not list(dataset.parent.glob(f".{dataset.name}*"))
    with pytest.raises(ValueError, match="not an openmm-cgml coarse dataset"):
        CoarseDataset(chains[0])
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        CoarseDataset(not_hdf5)


def test_files_missing_a_key_are_refused_naming_it(chains, dataset, tmp_path):
    fine = tmp_path / "no_stride.h5"
    fine.write_bytes(open(chains[0], "rb").read())
    with h5py.File(fine, "r+") as handle:
        del handle.attrs["cgml_stride"]
    with pytest.raises(ValueError, match="no_stride.h5.*no attribute 'cgml_stride'"):
        coarse_grain([fine], tmp_path / "x.h5", lag=LAG, k=K)
    coarse = tmp_path / "no_mapping.h5"
    coarse.write_bytes(open(dataset, "rb").read())
    with h5py.File(coarse, "r+") as handle:
        del handle["traj/00001"].attrs["mapping"]
    with pytest.raises(ValueError, match="trajectory 00001 .* no attribute 'mapping'"):
        CoarseDataset(coarse)
    with h5py.File(coarse, "r+") as handle:
        del handle.attrs["lag"]
    with pytest.raises(ValueError, match="no root attribute 'lag'"):
        CoarseDataset(coarse)


def test_views_share_the_file_and_statistics_come_from_the_dataset(dataset):
    everything = CoarseDataset(dataset, split=None)
    train = everything.view("train")
    assert train._file is everything._file   # one open file, not one per split
    assert len(train) == len(CoarseDataset(dataset, "train")) and train.groups == CoarseDataset(dataset).groups
    assert len(everything.view("val", k=1)) == len(CoarseDataset(dataset, "val", k=1))
    assert everything.scales()["accel_std_nm"] == pytest.approx(everything.accel_std_nm) and everything.accel_std_nm > 0
    assert len(everything.mappings()) == everything.summary()["n_molecules"] == 3
    assert train.min_distances()["frames"] > 0
    loader = make_loader(everything, "val", batch_size=2)
    assert loader.dataset.split == "val" and loader.dataset._file is everything._file


def test_mapping_file_that_does_not_fit_is_refused(chains, tmp_path):
    mapping_file = tmp_path / "map.json"
    mapping_file.write_text('{"beads": [{"name": "A", "atoms": [0, 1, 2]}, {"name": "B", "atoms": [3, 4]}]}')
    with pytest.raises(ValueError, match="chain0.h5.*leaves 7 atoms without a bead"):
        coarse_grain(chains, tmp_path / "x.h5", mapping=str(mapping_file), lag=LAG, k=K)


def test_cli_coarse_grain(chains, tmp_path, capsys):
    out = tmp_path / "cli.h5"
    assert cli.main(["coarse-grain", *map(str, chains[:2]), "--out", str(out), "--mapping", "residue",
                     "--model-steps", str(2 * STRIDE), "--k", "2", "--split", "0.5,0.5,0"]) == 0
    assert "wrote" in capsys.readouterr().out
    with h5py.File(out, "r") as handle:
        assert handle.attrs["lag"] == 2 and handle.attrs["mapping_method"] == "residue"
        assert handle.attrs["n_windows_test"] == 0
    assert cli.main(["coarse-grain", str(chains[0]), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_strided_reads_and_other_history_lengths_give_the_same_windows(dataset, monkeypatch):
    import openmm_cgml.data as data_module

    contiguous = CoarseDataset(dataset, "train")
    monkeypatch.setattr(data_module, "_CONTIGUOUS_READ_BYTES", 0)   # force HDF5 strided selections
    strided = CoarseDataset(dataset, "train")
    for index in (0, len(strided) // 2, len(strided) - 1):
        assert torch.equal(strided[index].pos_history, contiguous[index].pos_history)
        assert torch.equal(strided[index].pos_target, contiguous[index].pos_target)
    short = CoarseDataset(dataset, "train", k=1)
    assert len(short) == len(contiguous) + (K - 1) * LAG * len(contiguous.groups)
    traj, t = short.locate(0)
    assert t == 0 and short[0].pos_history.shape[1] == 1
    assert contiguous.mapping(0).n_beads == contiguous[0].num_nodes
    with pytest.raises(IndexError):
        contiguous[len(contiguous)]


def test_from_generate_to_loader(tmp_path):
    from openmm_cgml.generate import generate

    paths = generate("polymer-chain", tmp_path / "fine", frames=12, stride=50, sequences=2, replicas=1,
                     equilibration_steps=0, params={"length": 5}, progress=False, platform="Reference")
    # the default model step is the smallest multiple of the stride with at least 1000 MD steps
    with pytest.raises(ValueError, match="lag=20 frames needs 41"):
        coarse_grain(paths, tmp_path / "cg.h5", k=2)
    out = coarse_grain(paths, tmp_path / "cg.h5", k=2, model_steps=100, split=(0.5, 0.5, 0.0))
    with h5py.File(out, "r") as handle:
        assert handle.attrs["md_steps_per_model_step"] == 100 and handle.attrs["lag"] == 2
        assert handle.attrs["temperature_K"] == pytest.approx(300.0)
        assert {handle["traj"][n].attrs["split"] for n in handle["traj"]} == {"train", "val"}
    batch = next(iter(make_loader(out, "val", batch_size=3)))
    assert batch.num_graphs == 3 and batch.pos_history.shape == (batch.num_nodes, 2, 3)
    assert torch.isfinite(batch.pos_target).all()
