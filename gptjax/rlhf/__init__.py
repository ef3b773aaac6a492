"""InstructGPT's three stages (Ouyang et al. 2022, §3.5 and Appendix C) on gptjax's model and decoder.

`sft` fine-tunes on demonstrations with the loss on response tokens only, `reward` turns the SFT model into a
scalar reward model trained on K-way rankings, `ppo` optimises the policy against it with a per-token KL
penalty to the frozen SFT policy and, for PPO-ptx, the pretraining LM term. `toy` is the synthetic task with a
known true reward r* that the tests and bench/rlhf_toy.py measure every stage against; `pipeline` holds the
stages' building blocks (data, the PPO loop, evaluation) and `stages` runs each in its own run directory
(`gptjax align pretrain|sft|rm|ppo`, chained by directory).
"""
