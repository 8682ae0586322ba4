mod pve;
