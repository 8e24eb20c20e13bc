"""The target-domain simulator: RC2-like cases from the built-in phantom or the RC2 segmentation.

tissue.py     per-label chi (RC2 chiref, Sim1/Sim2), M0 and R2* at 7 T
texture.py    correlated texture and deep-grey iron gradients
phantom.py    built-in head phantom (MNI ICBM152 anatomy, RC2 labels, texture)
gre.py        multi-echo GRE signal, k-space crop, noise, RC2 field estimate
gibbs.py      Gibbs ringing removal of the cropped ground truth (dipy), ringing measure
simulate.py   RC2-like target cases Sim{1,2}Snr{1,2} (`python -m daqsm.training_data.simulator.simulate`,
              daqsm-simulate); writes case folders (daqsm/training_data/formats/case_folder.py)
"""
