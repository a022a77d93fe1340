"""Peak memory is bounded by the batch size, not the image area (a 2400×2400 pair used to hold
every window's reference features). On the smallest backbone whose cached features would show:
clip_vitb32 keeps 1.8 MB per window, so caching a 2400×2400 reference's 121 windows adds
about 420 MB on this CPU, the blockwise comparison about 200."""
import subprocess
import sys

from helpers import ROOT


def test_large_pair_peaks_near_a_small_one(checkpoint, tmp_path):
    """clip_vitb32 on this CPU: a 2400×2400 pair peaks within 300 MB of a 256×256 one."""
    def peak(size):
        script = str(ROOT / "tests" / "peak_rss.py")
        proc = subprocess.run([sys.executable, script, checkpoint("clip_vitb32"), str(size), str(tmp_path)],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        rss, score = map(float, proc.stdout.split())
        assert 0 < score < 1  # a real, finite distance of a noisy copy
        return rss
    small, large = peak(256), peak(2400)
    assert large - small < 300, (small, large)
