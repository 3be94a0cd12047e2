"""What every training loop shares, whatever it trains: the Accelerate set-up, the run folder (`RunFolder`: its
rules, the log, resume) and the train states, so a run of any task launches, saves and resumes the same way.
"""
