import sys, numpy as np
import sim.chip_random_old as cr
from sim.chip_api import ChipSim
from spec import isa
seed = int(sys.argv[1])
sim = ChipSim("tiny")
b = cr.RandomPrograms("tiny", seed).build(3, 40)
print(b.summary())
for pi, (p, e) in enumerate(zip(b.programs, b.expect)):
    if e[0] != 0:
        op, f = isa.decode(p.words[e[2]])
        print("program", pi, "fails at", e, op.name, {k: v for k, v in f.items() if v and not k.startswith("wait")})
res = b.run(sim, seed=seed)
try:
    b.check(sim, res); print("ok")
except AssertionError as exc:
    print(exc)
    for name, addr, n in b.read_back:
        got = np.asarray(res.outputs[name], np.uint8); want = b.model.ext[addr:addr+n]
        bad = np.flatnonzero(got != want)
        if len(bad) and name.startswith("arena"):
            bank = int(name[5:]); words = sorted(set(bank * 1024 + (x // 4) // 2 for x in bad))
            print(name, "spad words", words[0], "..", words[-1], len(words), "chip zero:", not got[bad].any())
