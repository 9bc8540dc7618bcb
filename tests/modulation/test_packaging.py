import subprocess
import sys


def test_importing_the_method_does_not_import_lightning():
    """Neither the method nor its peft registration (hycam_pl.peft): both serve users outside Lightning."""
    code = (
        "import sys, hycam_pl.modulation, hycam_pl, hycam_pl.peft; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
