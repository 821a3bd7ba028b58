"""pytest's rootdir and ini file, decided again once the plugin's options are known.

pytest decides its rootdir and reads its ini file before it loads installed plugins, so it parses the
command line without their options at that point: in `pytest -m tuned --adapter /ci/artifacts/adapter`,
the value looks like a test path, and its folder becomes the rootdir. There is no pyproject.toml there,
so the run would have had no floors, no gate modes, no testpaths and no addopts: the gate would judge
against the targets, under free decoding only. By the time pytest loads the initial conftests, the
options parse; `decide_setup_again` then decides from the real test paths alone and puts the result in
place of the first guess. It uses pytest's own `determine_setup`, and the Config attributes that hold
its result (private ones: pytest offers no public way to change its rootdir once decided).
"""

from __future__ import annotations


def decide_setup_again(config, args: list[str]) -> None:
    """Redo pytest's setup from the test paths in `config.known_args_namespace` (option values no longer
    among them); prepend the ini file's addopts to `args` when the first guess read no ini file (one
    that did had its own addopts applied, which cannot be taken back)."""
    from _pytest.config.findpaths import determine_setup

    ns = config.known_args_namespace
    rootpath, inipath, inicfg, ignored = determine_setup(
        inifile=ns.inifilename, override_ini=ns.override_ini, args=ns.file_or_dir,
        rootdir_cmd_arg=ns.rootdir or None, invocation_dir=config.invocation_params.dir)
    if (rootpath, inipath) == (config.rootpath, config.inipath):
        return
    first_guess = str(config.inipath.parent if config.inipath else config.rootpath)
    had_ini = config.inipath is not None
    config._rootpath, config._inipath, config._inicfg = rootpath, inipath, inicfg
    config._ignored_config_files = ignored
    config._inicache.clear()
    config._parser.extra_info.update(rootdir=str(rootpath), inifile=str(inipath))
    if ns.confcutdir == first_guess:  # pytest's default, from the first guess; a user's own stays
        ns.confcutdir = str(inipath.parent if inipath else rootpath)
    if not had_ini:  # the first guess read no ini file, so no addopts were applied: apply this one's
        args[:] = config._validate_args(config.getini("addopts"), "via addopts config") + args
