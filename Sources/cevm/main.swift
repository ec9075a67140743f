import CEVMCommands

await CEVM.launch()
