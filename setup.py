"""The build, as setup.cfg declares it, plus one file setup.cfg cannot place: ``smtlock.pth`` at the top
of site-packages, which Python runs at start (it installs ``_smtlock_startup``'s import hook)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "smtlock.pth"


class BuildWithPth(build_py):
    """``build_py``, and the ``.pth`` copied beside the packages (so it is in the wheel's root)."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(Path(__file__).with_name(PTH)), str(Path(self._folder()) / PTH))

    def _folder(self) -> str:
        """Where the wheel's root is built: ``build_lib``; for an editable install (PEP 660), whose wheel
        holds no built module, setuptools' unpacked wheel, which is the install command's folder."""
        if getattr(self, "editable_mode", False):
            return str(self.get_finalized_command("install").install_lib)
        return str(self.build_lib)

    def get_outputs(self, include_bytecode: bool = True) -> list:
        return [*super().get_outputs(include_bytecode), str(Path(self._folder()) / PTH)]


setup(cmdclass={"build_py": BuildWithPth})
