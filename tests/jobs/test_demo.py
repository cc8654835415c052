from ember.jobs.demo import DemoConfig, demo


def test_demo_reconstructs_close_to_truth(tmp_path):
    """The bundled demo end to end (smaller): Wiener reconstruction from the true angles of 1AKE."""
    result = demo(DemoConfig(output=tmp_path, n_particles=600, snr=0.1))
    assert result.resolution_05 < 4.0  # Å, Nyquist 3 Å
    assert (tmp_path / "fsc_vs_truth.png").stat().st_size > 1000
    assert (tmp_path / "reconstruct" / "map.mrc").exists()
